// Decodes arbitrary bytes; whatever decodes must re-encode and decode to the same fields.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "wire/wire.h"

namespace {

using namespace homa::wire;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "wire_decode_fuzz: %s\n", what);
    std::abort();
  }
}

void roundTrip(std::span<const uint8_t> bytes, uint32_t maxMessageLength) {
  Packet p;
  if (decode(bytes, maxMessageLength, p) != DecodeError::Ok) return;

  check(headerSize(p.common.type) != 0, "Ok with an unknown type");
  check(bytes.size() >= headerSize(p.common.type), "Ok on a truncated packet");
  if (p.common.type == PacketType::Data) {
    check(!p.payload.empty(), "DATA without payload");
    check(p.payload.data() == bytes.data() + kDataHeaderSize, "payload not after header");
    check(p.data.messageLength != 0 && p.data.messageLength <= maxMessageLength,
          "bad message length");
    check(uint64_t{p.data.offset} + p.payload.size() <= p.data.messageLength,
          "payload beyond message");
  } else {
    check(p.payload.empty(), "payload on a control packet");
  }

  // Room for the largest header plus the largest payload a datagram can carry.
  static uint8_t buf[kMaxHeaderSize + 65536];
  size_t n = 0;
  switch (p.common.type) {
    case PacketType::Data: n = encodeData(buf, p.common, p.data); break;
    case PacketType::Grant: n = encodeGrant(buf, p.common, p.grant); break;
    case PacketType::Resend: n = encodeResend(buf, p.common, p.resend); break;
    case PacketType::Cutoffs: n = encodeCutoffs(buf, p.common, p.cutoffs); break;
    case PacketType::Ack: n = encodeAck(buf, p.common, p.ack); break;
    default: n = encodeEmpty(buf, p.common); break;
  }
  check(n == headerSize(p.common.type), "encoder returned the wrong size");
  if (p.payload.size() > sizeof(buf) - n) return;  // larger than any real datagram
  for (size_t i = 0; i < p.payload.size(); ++i) buf[n + i] = p.payload[i];

  Packet q;
  check(decode({buf, n + p.payload.size()}, maxMessageLength, q) == DecodeError::Ok,
        "re-encoded packet does not decode");
  check(q.common == p.common, "common header changed");
  check(q.data == p.data, "DATA header changed");
  check(q.grant == p.grant, "GRANT header changed");
  check(q.resend == p.resend, "RESEND header changed");
  check(q.cutoffs == p.cutoffs, "CUTOFFS header changed");
  check(q.ack == p.ack, "ACK header changed");
  check(q.payload.size() == p.payload.size(), "payload length changed");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> bytes(data, size);
  roundTrip(bytes, 1'000'000);         // the kernel module's limit
  roundTrip(bytes, 16u * 1024 * 1024);  // a larger configured limit
  return 0;
}
