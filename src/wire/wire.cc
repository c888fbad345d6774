#include "wire/wire.h"

namespace homa::wire {
namespace {

// Byte offsets within a packet (common header included).
namespace off {
// Common header.
inline constexpr size_t kSport = 0;
inline constexpr size_t kDport = 2;
inline constexpr size_t kSequence = 4;
inline constexpr size_t kType = 11;
inline constexpr size_t kDoff = 12;
inline constexpr size_t kFlags = 13;
inline constexpr size_t kSenderId = 20;
// DATA.
inline constexpr size_t kMessageLength = 28;
inline constexpr size_t kIncoming = 32;
inline constexpr size_t kAckClientId = 36;
inline constexpr size_t kAckServerPort = 44;
inline constexpr size_t kCutoffVersion = 46;
inline constexpr size_t kRetransmit = 48;
inline constexpr size_t kSegmentOffset = 52;
// GRANT.
inline constexpr size_t kGrantOffset = 28;
inline constexpr size_t kGrantPriority = 32;
// RESEND.
inline constexpr size_t kResendOffset = 28;
inline constexpr size_t kResendLength = 32;
inline constexpr size_t kResendPriority = 36;
// CUTOFFS.
inline constexpr size_t kCutoffs = 28;
inline constexpr size_t kCutoffsVersion = 60;
// ACK.
inline constexpr size_t kNumAcks = 28;
inline constexpr size_t kAcks = 30;
inline constexpr size_t kAckEntrySize = 10;
}  // namespace off

static_assert(off::kAckServerPort == off::kAckClientId + 8);
static_assert(off::kSegmentOffset + 4 == kDataHeaderSize);
static_assert(off::kGrantPriority + 1 == kGrantSize);
static_assert(off::kResendPriority + 1 == kResendSize);
static_assert(off::kCutoffsVersion + 2 == kCutoffsSize);
static_assert(off::kAcks + kMaxAcksPerPacket * off::kAckEntrySize == kAckPacketSize);
static_assert(kAckPacketSize <= kMaxHeaderSize && kDataHeaderSize <= kMaxHeaderSize);

// Explicit byte assembly: independent of host byte order and of the buffer's alignment.
// Callers have already checked that the buffer is long enough.
void put8(uint8_t* p, uint8_t v) { p[0] = v; }
void put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
void put32(uint8_t* p, uint32_t v) {
  put16(p, static_cast<uint16_t>(v >> 16));
  put16(p + 2, static_cast<uint16_t>(v));
}
void put64(uint8_t* p, uint64_t v) {
  put32(p, static_cast<uint32_t>(v >> 32));
  put32(p + 4, static_cast<uint32_t>(v));
}

uint8_t get8(const uint8_t* p) { return p[0]; }
uint16_t get16(const uint8_t* p) {
  return static_cast<uint16_t>((uint16_t{p[0]} << 8) | uint16_t{p[1]});
}
uint32_t get32(const uint8_t* p) {
  return (uint32_t{get16(p)} << 16) | uint32_t{get16(p + 2)};
}
uint64_t get64(const uint8_t* p) {
  return (uint64_t{get32(p)} << 32) | uint64_t{get32(p + 4)};
}

bool isEmptyType(PacketType type) {
  switch (type) {
    case PacketType::RpcUnknown:
    case PacketType::Busy:
    case PacketType::Freeze:
    case PacketType::NeedAck:
      return true;
    default:
      return false;
  }
}

// Zeroes the whole header first so that every unused field goes out as zero.
uint8_t* beginHeader(std::span<uint8_t> out, size_t size, const CommonHeader& common,
                     PacketType type) {
  uint8_t* p = out.data();
  for (size_t i = 0; i < size; ++i) p[i] = 0;
  put16(p + off::kSport, common.sport);
  put16(p + off::kDport, common.dport);
  put32(p + off::kSequence, common.sequence);
  put8(p + off::kType, static_cast<uint8_t>(type));
  put8(p + off::kFlags, common.flags);
  put64(p + off::kSenderId, common.senderId);
  return p;
}

// An ack entry has the same 10-byte layout in DATA and ACK packets.
void decodeAckEntry(const uint8_t* p, AckEntry& out) {
  out.clientId = get64(p);
  out.serverPort = get16(p + (off::kAckServerPort - off::kAckClientId));
}

void encodeAckEntry(uint8_t* p, const AckEntry& entry) {
  put64(p, entry.clientId);
  put16(p + (off::kAckServerPort - off::kAckClientId), entry.serverPort);
}

DecodeError decodeData(std::span<const uint8_t> bytes, uint32_t maxMessageLength,
                       Packet& out) {
  const uint8_t* p = bytes.data();
  DataHeader& d = out.data;
  d = DataHeader{};
  d.messageLength = get32(p + off::kMessageLength);
  d.incoming = get32(p + off::kIncoming);
  decodeAckEntry(p + off::kAckClientId, d.ack);
  d.cutoffVersion = get16(p + off::kCutoffVersion);
  d.retransmit = get8(p + off::kRetransmit) != 0;
  d.offset = get32(p + off::kSegmentOffset);
  out.payload = bytes.subspan(kDataHeaderSize);

  if (d.messageLength == 0) return DecodeError::ZeroMessageLength;
  if (d.messageLength > maxMessageLength) return DecodeError::MessageTooLong;
  if (out.payload.empty()) return DecodeError::EmptyPayload;
  // The offset travels twice (sequence is what TSO advances per segment); a disagreement
  // means a corrupt or forged packet.
  if (out.common.sequence != d.offset) return DecodeError::OffsetMismatch;
  if (uint64_t{d.offset} + uint64_t{out.payload.size()} > uint64_t{d.messageLength}) {
    return DecodeError::BeyondMessage;
  }
  return DecodeError::Ok;
}

}  // namespace

const char* toString(DecodeError error) {
  switch (error) {
    case DecodeError::Ok: return "Ok";
    case DecodeError::Truncated: return "Truncated";
    case DecodeError::UnknownType: return "UnknownType";
    case DecodeError::ZeroMessageLength: return "ZeroMessageLength";
    case DecodeError::MessageTooLong: return "MessageTooLong";
    case DecodeError::EmptyPayload: return "EmptyPayload";
    case DecodeError::OffsetMismatch: return "OffsetMismatch";
    case DecodeError::BeyondMessage: return "BeyondMessage";
    case DecodeError::BadPriority: return "BadPriority";
    case DecodeError::BadAckCount: return "BadAckCount";
    case DecodeError::BadGrantOffset: return "BadGrantOffset";
    case DecodeError::BadResendRange: return "BadResendRange";
    case DecodeError::Count_: break;
  }
  return "InvalidDecodeError";
}

const char* toString(PacketType type) {
  switch (type) {
    case PacketType::Data: return "DATA";
    case PacketType::Grant: return "GRANT";
    case PacketType::Resend: return "RESEND";
    case PacketType::RpcUnknown: return "RPC_UNKNOWN";
    case PacketType::Busy: return "BUSY";
    case PacketType::Cutoffs: return "CUTOFFS";
    case PacketType::Freeze: return "FREEZE";
    case PacketType::NeedAck: return "NEED_ACK";
    case PacketType::Ack: return "ACK";
  }
  return "UNKNOWN";
}

size_t headerSize(PacketType type) {
  switch (type) {
    case PacketType::Data: return kDataHeaderSize;
    case PacketType::Grant: return kGrantSize;
    case PacketType::Resend: return kResendSize;
    case PacketType::Cutoffs: return kCutoffsSize;
    case PacketType::Ack: return kAckPacketSize;
    case PacketType::RpcUnknown:
    case PacketType::Busy:
    case PacketType::Freeze:
    case PacketType::NeedAck: return kCommonHeaderSize;
  }
  return 0;
}

DecodeError decode(std::span<const uint8_t> bytes, uint32_t maxMessageLength, Packet& out) {
  // Only what this packet's type uses is reset: clearing the whole Packet (its ACK and
  // CUTOFFS arrays included) cost more than the rest of decoding a DATA packet.
  out.common = CommonHeader{};
  out.payload = {};
  if (bytes.size() < kCommonHeaderSize) return DecodeError::Truncated;
  const uint8_t* p = bytes.data();
  const auto type = static_cast<PacketType>(get8(p + off::kType));
  const size_t size = headerSize(type);
  if (size == 0) return DecodeError::UnknownType;
  if (bytes.size() < size) return DecodeError::Truncated;

  CommonHeader& c = out.common;
  c.sport = get16(p + off::kSport);
  c.dport = get16(p + off::kDport);
  c.sequence = get32(p + off::kSequence);
  c.type = type;
  c.flags = get8(p + off::kFlags);
  c.senderId = get64(p + off::kSenderId);

  switch (type) {
    case PacketType::Data:
      return decodeData(bytes, maxMessageLength, out);
    case PacketType::Grant: {
      GrantHeader& g = out.grant;
      g = GrantHeader{};
      g.offset = get32(p + off::kGrantOffset);
      g.priority = get8(p + off::kGrantPriority);
      if (g.priority >= kNumPriorities) return DecodeError::BadPriority;
      if (g.offset > maxMessageLength) return DecodeError::BadGrantOffset;
      return DecodeError::Ok;
    }
    case PacketType::Resend: {
      ResendHeader& r = out.resend;
      r = ResendHeader{};
      r.offset = get32(p + off::kResendOffset);
      r.length = get32(p + off::kResendLength);
      r.priority = get8(p + off::kResendPriority);
      if (r.priority >= kNumPriorities) return DecodeError::BadPriority;
      if (r.length != kResendAll &&
          uint64_t{r.offset} + uint64_t{r.length} > uint64_t{maxMessageLength}) {
        return DecodeError::BadResendRange;
      }
      return DecodeError::Ok;
    }
    case PacketType::Cutoffs: {
      CutoffsHeader& ch = out.cutoffs;
      ch = CutoffsHeader{};
      for (size_t i = 0; i < ch.cutoffs.size(); ++i) {
        ch.cutoffs[i] = get32(p + off::kCutoffs + 4 * i);
      }
      ch.version = get16(p + off::kCutoffsVersion);
      return DecodeError::Ok;
    }
    case PacketType::Ack: {
      AckHeader& a = out.ack;
      a = AckHeader{};
      a.numAcks = get16(p + off::kNumAcks);
      if (a.numAcks > kMaxAcksPerPacket) return DecodeError::BadAckCount;
      for (size_t i = 0; i < a.numAcks; ++i) {
        decodeAckEntry(p + off::kAcks + i * off::kAckEntrySize, a.acks[i]);
      }
      return DecodeError::Ok;
    }
    case PacketType::RpcUnknown:
    case PacketType::Busy:
    case PacketType::Freeze:
    case PacketType::NeedAck:
      return DecodeError::Ok;
  }
  return DecodeError::UnknownType;  // unreachable: headerSize() rejected it
}

size_t encodeData(std::span<uint8_t> out, const CommonHeader& common, const DataHeader& data) {
  if (out.size() < kDataHeaderSize) return 0;
  uint8_t* p = beginHeader(out, kDataHeaderSize, common, PacketType::Data);
  put32(p + off::kSequence, data.offset);
  // TSO needs the header length in the TCP-style data offset nibble.
  put8(p + off::kDoff, static_cast<uint8_t>((kDataHeaderSize / 4) << 4));
  put32(p + off::kMessageLength, data.messageLength);
  put32(p + off::kIncoming, data.incoming);
  encodeAckEntry(p + off::kAckClientId, data.ack);
  put16(p + off::kCutoffVersion, data.cutoffVersion);
  put8(p + off::kRetransmit, data.retransmit ? 1 : 0);
  put32(p + off::kSegmentOffset, data.offset);
  return kDataHeaderSize;
}

size_t encodeGrant(std::span<uint8_t> out, const CommonHeader& common,
                   const GrantHeader& grant) {
  if (out.size() < kGrantSize) return 0;
  uint8_t* p = beginHeader(out, kGrantSize, common, PacketType::Grant);
  put32(p + off::kGrantOffset, grant.offset);
  put8(p + off::kGrantPriority, grant.priority);
  return kGrantSize;
}

size_t encodeResend(std::span<uint8_t> out, const CommonHeader& common,
                    const ResendHeader& resend) {
  if (out.size() < kResendSize) return 0;
  uint8_t* p = beginHeader(out, kResendSize, common, PacketType::Resend);
  put32(p + off::kResendOffset, resend.offset);
  put32(p + off::kResendLength, resend.length);
  put8(p + off::kResendPriority, resend.priority);
  return kResendSize;
}

size_t encodeCutoffs(std::span<uint8_t> out, const CommonHeader& common,
                     const CutoffsHeader& cutoffs) {
  if (out.size() < kCutoffsSize) return 0;
  uint8_t* p = beginHeader(out, kCutoffsSize, common, PacketType::Cutoffs);
  for (size_t i = 0; i < cutoffs.cutoffs.size(); ++i) {
    put32(p + off::kCutoffs + 4 * i, cutoffs.cutoffs[i]);
  }
  put16(p + off::kCutoffsVersion, cutoffs.version);
  return kCutoffsSize;
}

size_t encodeAck(std::span<uint8_t> out, const CommonHeader& common, const AckHeader& ack) {
  if (out.size() < kAckPacketSize || ack.numAcks > kMaxAcksPerPacket) return 0;
  uint8_t* p = beginHeader(out, kAckPacketSize, common, PacketType::Ack);
  put16(p + off::kNumAcks, ack.numAcks);
  // Entries past numAcks stay zero: the receiver must not see stale ids there.
  for (size_t i = 0; i < ack.numAcks; ++i) {
    encodeAckEntry(p + off::kAcks + i * off::kAckEntrySize, ack.acks[i]);
  }
  return kAckPacketSize;
}

size_t encodeEmpty(std::span<uint8_t> out, const CommonHeader& common) {
  if (!isEmptyType(common.type) || out.size() < kCommonHeaderSize) return 0;
  beginHeader(out, kCommonHeaderSize, common, common.type);
  return kCommonHeaderSize;
}

}  // namespace homa::wire
