#include "wire/wire.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace homa::wire {
namespace {

using Bytes = std::vector<uint8_t>;

constexpr uint32_t kMax = 1'000'000;

constexpr std::array<PacketType, 9> kAllTypes = {
    PacketType::Data,    PacketType::Grant,  PacketType::Resend,
    PacketType::RpcUnknown, PacketType::Busy, PacketType::Cutoffs,
    PacketType::Freeze,  PacketType::NeedAck, PacketType::Ack};

constexpr std::array<PacketType, 4> kEmptyTypes = {PacketType::RpcUnknown, PacketType::Busy,
                                                   PacketType::Freeze, PacketType::NeedAck};

// Writers used to craft hostile packets independently of the encoders.
void setBe16(Bytes& b, size_t at, uint16_t v) {
  b.at(at) = static_cast<uint8_t>(v >> 8);
  b.at(at + 1) = static_cast<uint8_t>(v);
}
void setBe32(Bytes& b, size_t at, uint32_t v) {
  setBe16(b, at, static_cast<uint16_t>(v >> 16));
  setBe16(b, at + 2, static_cast<uint16_t>(v));
}

CommonHeader sampleCommon(PacketType type = PacketType::Data) {
  CommonHeader c;
  c.sport = 0x8001;
  c.dport = 99;
  c.sequence = 0;
  c.type = type;
  c.flags = 0x5A;
  c.senderId = 0x1122334455667788;
  return c;
}

DataHeader sampleData() {
  DataHeader d;
  d.messageLength = 5000;
  d.incoming = 4000;
  d.ack = {0xABCDEF0123456788, 4242};
  d.cutoffVersion = 7;
  d.retransmit = true;
  d.offset = 1400;
  return d;
}

// A DATA packet whose header is produced by the encoder, followed by `payloadSize` bytes.
Bytes dataPacket(const DataHeader& d, size_t payloadSize,
                 const CommonHeader& c = sampleCommon()) {
  Bytes b(kDataHeaderSize + payloadSize, 0);
  for (size_t i = 0; i < payloadSize; ++i) b[kDataHeaderSize + i] = static_cast<uint8_t>(i);
  EXPECT_EQ(encodeData(b, c, d), kDataHeaderSize);
  return b;
}

Bytes grantPacket(const GrantHeader& g) {
  Bytes b(kGrantSize);
  EXPECT_EQ(encodeGrant(b, sampleCommon(), g), kGrantSize);
  return b;
}

Bytes resendPacket(const ResendHeader& r) {
  Bytes b(kResendSize);
  EXPECT_EQ(encodeResend(b, sampleCommon(), r), kResendSize);
  return b;
}

Bytes ackPacket(const AckHeader& a) {
  Bytes b(kAckPacketSize);
  EXPECT_EQ(encodeAck(b, sampleCommon(), a), kAckPacketSize);
  return b;
}

DecodeError decodeBytes(const Bytes& b, Packet& out, uint32_t max = kMax) {
  return decode(std::span<const uint8_t>(b.data(), b.size()), max, out);
}

// ---- Round trips ----

TEST(WireRoundTrip, Data) {
  const CommonHeader c = sampleCommon();
  const DataHeader d = sampleData();
  Bytes b = dataPacket(d, 1200, c);
  Packet p;
  ASSERT_EQ(decodeBytes(b, p), DecodeError::Ok);
  CommonHeader expected = c;
  expected.sequence = d.offset;
  EXPECT_EQ(p.common, expected);
  EXPECT_EQ(p.data, d);
  EXPECT_EQ(p.payload.size(), 1200u);
}

// The engine decodes every packet into the same Packet: what one packet set must not
// show through in the next.
TEST(WireDecode, ReusedPacketShowsOnlyTheLatest) {
  Packet p;
  DataHeader d = sampleData();
  d.retransmit = true;
  ASSERT_EQ(decodeBytes(dataPacket(d, 100, sampleCommon()), p), DecodeError::Ok);
  AckHeader three;
  three.numAcks = 3;
  for (int i = 0; i < 3; ++i) three.acks[i] = {.clientId = 100u + 2u * i, .serverPort = 7};
  ASSERT_EQ(decodeBytes(ackPacket(three), p), DecodeError::Ok);
  EXPECT_TRUE(p.payload.empty());
  EXPECT_EQ(p.ack, three);
  AckHeader one;
  one.numAcks = 1;
  one.acks[0] = {.clientId = 42, .serverPort = 9};
  ASSERT_EQ(decodeBytes(ackPacket(one), p), DecodeError::Ok);
  EXPECT_EQ(p.ack, one);  // entries 1 and 2 of the earlier packet are gone
  DataHeader plain = sampleData();
  plain.retransmit = false;
  ASSERT_EQ(decodeBytes(dataPacket(plain, 10, sampleCommon()), p), DecodeError::Ok);
  EXPECT_EQ(p.data, plain);
  EXPECT_EQ(p.payload.size(), 10u);
  EXPECT_EQ(p.common.type, PacketType::Data);
  ASSERT_EQ(decodeBytes(grantPacket({.offset = 5, .priority = 1}), p), DecodeError::Ok);
  EXPECT_TRUE(p.payload.empty());
  EXPECT_EQ(p.common.flags, sampleCommon(PacketType::Grant).flags);
  Bytes runt(3, 0);
  EXPECT_EQ(decodeBytes(runt, p), DecodeError::Truncated);
  EXPECT_EQ(p.common, CommonHeader{});
}

TEST(WireRoundTrip, Grant) {
  const GrantHeader g{.offset = 123456, .priority = 7};
  Packet p;
  ASSERT_EQ(decodeBytes(grantPacket(g), p), DecodeError::Ok);
  EXPECT_EQ(p.common, sampleCommon(PacketType::Grant));
  EXPECT_EQ(p.grant, g);
  EXPECT_TRUE(p.payload.empty());
}

TEST(WireRoundTrip, Resend) {
  const ResendHeader r{.offset = 10'000, .length = 2'800, .priority = 3};
  Packet p;
  ASSERT_EQ(decodeBytes(resendPacket(r), p), DecodeError::Ok);
  EXPECT_EQ(p.common, sampleCommon(PacketType::Resend));
  EXPECT_EQ(p.resend, r);
}

TEST(WireRoundTrip, ResendAllIgnoresRangeCheck) {
  // "Everything sent so far" has no end, so the offset alone is not range-checked.
  const ResendHeader r{.offset = 0xFFFFFFF0, .length = kResendAll, .priority = 0};
  Packet p;
  ASSERT_EQ(decodeBytes(resendPacket(r), p), DecodeError::Ok);
  EXPECT_EQ(p.resend, r);
}

TEST(WireRoundTrip, Cutoffs) {
  CutoffsHeader ch;
  ch.cutoffs = {0, 0, 0, 0, 1'000'000, 15'000, 2'800, 200};
  ch.version = 0xBEEF;
  Bytes b(kCutoffsSize);
  ASSERT_EQ(encodeCutoffs(b, sampleCommon(), ch), kCutoffsSize);
  Packet p;
  ASSERT_EQ(decodeBytes(b, p), DecodeError::Ok);
  EXPECT_EQ(p.common, sampleCommon(PacketType::Cutoffs));
  EXPECT_EQ(p.cutoffs, ch);
}

TEST(WireRoundTrip, AckFull) {
  AckHeader a;
  a.numAcks = kMaxAcksPerPacket;
  for (int i = 0; i < kMaxAcksPerPacket; ++i) {
    a.acks[i] = {0x1000000000000000ull + 2 * static_cast<uint64_t>(i),
                 static_cast<uint16_t>(100 + i)};
  }
  Packet p;
  ASSERT_EQ(decodeBytes(ackPacket(a), p), DecodeError::Ok);
  EXPECT_EQ(p.common, sampleCommon(PacketType::Ack));
  EXPECT_EQ(p.ack, a);
}

TEST(WireRoundTrip, AckPartialDropsUnusedEntries) {
  AckHeader a;
  a.numAcks = 2;
  a.acks = {{{10, 1}, {12, 2}, {14, 3}, {16, 4}, {18, 5}}};
  Packet p;
  ASSERT_EQ(decodeBytes(ackPacket(a), p), DecodeError::Ok);
  EXPECT_EQ(p.ack.numAcks, 2);
  EXPECT_EQ(p.ack.acks[0], (AckEntry{10, 1}));
  EXPECT_EQ(p.ack.acks[1], (AckEntry{12, 2}));
  for (int i = 2; i < kMaxAcksPerPacket; ++i) EXPECT_EQ(p.ack.acks[i], AckEntry{}) << i;
}

TEST(WireRoundTrip, EmptyTypes) {
  for (PacketType t : kEmptyTypes) {
    SCOPED_TRACE(toString(t));
    Bytes b(kCommonHeaderSize);
    ASSERT_EQ(encodeEmpty(b, sampleCommon(t)), kCommonHeaderSize);
    Packet p;
    ASSERT_EQ(decodeBytes(b, p), DecodeError::Ok);
    EXPECT_EQ(p.common, sampleCommon(t));
  }
}

// ---- Exact layout ----

TEST(WireLayout, DataBytes) {
  CommonHeader c;
  c.sport = 0x1234;
  c.dport = 0x5678;
  c.sequence = 0xDEAD;  // replaced by the segment offset
  c.type = PacketType::Grant;  // replaced by DATA
  c.flags = 0x9A;
  c.senderId = 0x0102030405060708;
  DataHeader d;
  d.messageLength = 100'000;  // 0x000186A0
  d.incoming = 10'000;        // 0x00002710
  d.ack = {0x1112131415161718, 0x2122};
  d.cutoffVersion = 0x3132;
  d.retransmit = true;
  d.offset = 20'000;  // 0x00004E20
  const Bytes expected = {
      0x12, 0x34, 0x56, 0x78,                          // sport, dport
      0x00, 0x00, 0x4E, 0x20,                          // sequence = segment offset
      0x00, 0x00, 0x00, 0x10,                          // unused[3], type
      0xE0, 0x9A, 0x00, 0x00,                          // doff = 56/4 << 4, flags, window
      0x00, 0x00, 0x00, 0x00,                          // checksum, urgent
      0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,  // sender id
      0x00, 0x01, 0x86, 0xA0,                          // message length
      0x00, 0x00, 0x27, 0x10,                          // incoming
      0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,  // ack client id
      0x21, 0x22,                                      // ack server port
      0x31, 0x32,                                      // cutoff version
      0x01, 0x00, 0x00, 0x00,                          // retransmit, pad
      0x00, 0x00, 0x4E, 0x20,                          // segment offset
  };
  ASSERT_EQ(expected.size(), kDataHeaderSize);
  Bytes b(kDataHeaderSize, 0xAA);
  ASSERT_EQ(encodeData(b, c, d), kDataHeaderSize);
  EXPECT_EQ(b, expected);
}

TEST(WireLayout, GrantBytes) {
  CommonHeader c;
  c.sport = 0xA1A2;
  c.dport = 0xB1B2;
  c.senderId = 0xDEADBEEFCAFEF00D;
  const Bytes expected = {
      0xA1, 0xA2, 0xB1, 0xB2,                          // sport, dport
      0x00, 0x00, 0x00, 0x00,                          // sequence
      0x00, 0x00, 0x00, 0x11,                          // unused[3], type
      0x00, 0x00, 0x00, 0x00,                          // doff, flags, window
      0x00, 0x00, 0x00, 0x00,                          // checksum, urgent
      0xDE, 0xAD, 0xBE, 0xEF, 0xCA, 0xFE, 0xF0, 0x0D,  // sender id
      0x00, 0x01, 0xE2, 0x40,                          // offset 123456
      0x05,                                            // priority
  };
  ASSERT_EQ(expected.size(), kGrantSize);
  Bytes b(kGrantSize, 0xAA);
  ASSERT_EQ(encodeGrant(b, c, {.offset = 123456, .priority = 5}), kGrantSize);
  EXPECT_EQ(b, expected);
}

TEST(WireLayout, AckBytes) {
  CommonHeader c;
  c.sport = 1;
  c.dport = 2;
  c.senderId = 0x10;
  AckHeader a;
  a.numAcks = 2;
  a.acks[0] = {0x0A0B0C0D0E0F1011, 0x8001};
  a.acks[1] = {0x22, 0x0203};
  a.acks[2] = {99, 99};  // beyond numAcks: must not be sent
  const uint8_t head[] = {
      0x00, 0x01, 0x00, 0x02,                          // sport, dport
      0x00, 0x00, 0x00, 0x00,                          // sequence
      0x00, 0x00, 0x00, 0x18,                          // unused[3], type
      0x00, 0x00, 0x00, 0x00,                          // doff, flags, window
      0x00, 0x00, 0x00, 0x00,                          // checksum, urgent
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,  // sender id
      0x00, 0x02,                                      // num acks
      0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x80, 0x01,  // acks[0]
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x22, 0x02, 0x03,  // acks[1]
  };
  Bytes expected(kAckPacketSize, 0x00);  // acks[2..4] stay zero
  std::copy(std::begin(head), std::end(head), expected.begin());
  Bytes b(kAckPacketSize, 0xAA);
  ASSERT_EQ(encodeAck(b, c, a), kAckPacketSize);
  EXPECT_EQ(b, expected);
}

TEST(WireLayout, ResendBytes) {
  Bytes b(kResendSize, 0xAA);
  ASSERT_EQ(encodeResend(b, CommonHeader{},
                         {.offset = 0x01020304, .length = kResendAll, .priority = 7}),
            kResendSize);
  EXPECT_EQ(b[11], 0x12);
  EXPECT_EQ(b[12], 0x00);  // doff is only set on DATA
  const Bytes body(b.begin() + 28, b.end());
  EXPECT_EQ(body, (Bytes{0x01, 0x02, 0x03, 0x04, 0xFF, 0xFF, 0xFF, 0xFF, 0x07}));
}

TEST(WireLayout, CutoffsBytes) {
  CutoffsHeader ch;
  ch.cutoffs[0] = 0x0A0B0C0D;
  ch.cutoffs[7] = 0x11223344;
  ch.version = 0xBEEF;
  Bytes b(kCutoffsSize, 0xAA);
  ASSERT_EQ(encodeCutoffs(b, CommonHeader{}, ch), kCutoffsSize);
  EXPECT_EQ(b[11], 0x15);
  EXPECT_EQ(Bytes(b.begin() + 28, b.begin() + 32), (Bytes{0x0A, 0x0B, 0x0C, 0x0D}));
  EXPECT_EQ(Bytes(b.begin() + 32, b.begin() + 56), Bytes(24, 0x00));
  EXPECT_EQ(Bytes(b.begin() + 56, b.begin() + 60), (Bytes{0x11, 0x22, 0x33, 0x44}));
  EXPECT_EQ(Bytes(b.begin() + 60, b.end()), (Bytes{0xBE, 0xEF}));
}

TEST(WireLayout, EmptyPacketBytes) {
  CommonHeader c;
  c.type = PacketType::NeedAck;
  c.sport = 0x0102;
  c.sequence = 0x03040506;
  Bytes b(kCommonHeaderSize, 0xAA);
  ASSERT_EQ(encodeEmpty(b, c), kCommonHeaderSize);
  Bytes expected(kCommonHeaderSize, 0x00);
  expected[0] = 0x01;
  expected[1] = 0x02;
  expected[4] = 0x03;
  expected[5] = 0x04;
  expected[6] = 0x05;
  expected[7] = 0x06;
  expected[11] = 0x17;
  EXPECT_EQ(b, expected);
}

TEST(WireLayout, EncodersWriteNothingPastTheHeader) {
  Bytes b(kMaxHeaderSize + 8, 0xAA);
  ASSERT_EQ(encodeGrant(b, sampleCommon(), {}), kGrantSize);
  for (size_t i = kGrantSize; i < b.size(); ++i) EXPECT_EQ(b[i], 0xAA) << i;
}

TEST(WireLayout, HeaderSizes) {
  EXPECT_EQ(headerSize(PacketType::Data), 56u);
  EXPECT_EQ(headerSize(PacketType::Grant), 33u);
  EXPECT_EQ(headerSize(PacketType::Resend), 37u);
  EXPECT_EQ(headerSize(PacketType::Cutoffs), 62u);
  EXPECT_EQ(headerSize(PacketType::Ack), 80u);
  for (PacketType t : kEmptyTypes) EXPECT_EQ(headerSize(t), 28u);
  EXPECT_EQ(headerSize(static_cast<PacketType>(0x19)), 0u);
  for (PacketType t : kAllTypes) EXPECT_LE(headerSize(t), kMaxHeaderSize);
}

// ---- Encoder refusals ----

TEST(WireEncode, ReturnsZeroWhenBufferTooSmall) {
  for (size_t size = 0; size < kMaxHeaderSize; ++size) {
    Bytes b(size, 0xAA);
    std::span<uint8_t> s(b);
    if (size < kDataHeaderSize) {
      EXPECT_EQ(encodeData(s, sampleCommon(), sampleData()), 0u);
    }
    if (size < kGrantSize) {
      EXPECT_EQ(encodeGrant(s, sampleCommon(), {}), 0u);
    }
    if (size < kResendSize) {
      EXPECT_EQ(encodeResend(s, sampleCommon(), {}), 0u);
    }
    if (size < kCutoffsSize) {
      EXPECT_EQ(encodeCutoffs(s, sampleCommon(), {}), 0u);
    }
    if (size < kAckPacketSize) {
      EXPECT_EQ(encodeAck(s, sampleCommon(), {}), 0u);
    }
    if (size < kCommonHeaderSize) {
      EXPECT_EQ(encodeEmpty(s, sampleCommon(PacketType::Busy)), 0u);
    }
    EXPECT_EQ(b, Bytes(size, 0xAA)) << "buffer of " << size << " was written";
  }
}

TEST(WireEncode, EmptyRejectsTypesWithABody) {
  Bytes b(kMaxHeaderSize, 0xAA);
  for (PacketType t : {PacketType::Data, PacketType::Grant, PacketType::Resend,
                       PacketType::Cutoffs, PacketType::Ack, static_cast<PacketType>(0),
                       static_cast<PacketType>(0x19), static_cast<PacketType>(0xFF)}) {
    EXPECT_EQ(encodeEmpty(b, sampleCommon(t)), 0u) << static_cast<int>(t);
  }
  EXPECT_EQ(b, Bytes(kMaxHeaderSize, 0xAA));
}

TEST(WireEncode, AckRejectsTooManyEntries) {
  Bytes b(kAckPacketSize);
  AckHeader a;
  a.numAcks = kMaxAcksPerPacket + 1;
  EXPECT_EQ(encodeAck(b, sampleCommon(), a), 0u);
}

TEST(WireEncode, EachEncoderSetsItsOwnType) {
  // common.type is ignored by all but encodeEmpty.
  const CommonHeader c = sampleCommon(PacketType::Busy);
  Bytes b(kMaxHeaderSize);
  Packet p;
  encodeData(b, c, sampleData());
  EXPECT_EQ(b[11], 0x10);
  encodeGrant(b, c, {});
  EXPECT_EQ(b[11], 0x11);
  encodeResend(b, c, {});
  EXPECT_EQ(b[11], 0x12);
  encodeCutoffs(b, c, {});
  EXPECT_EQ(b[11], 0x15);
  encodeAck(b, c, {});
  EXPECT_EQ(b[11], 0x18);
  ASSERT_EQ(decodeBytes(b, p), DecodeError::Ok);
  EXPECT_EQ(p.common.type, PacketType::Ack);
}

// ---- Decode errors ----

TEST(WireDecode, TruncatedCommonHeader) {
  const Bytes full = dataPacket(sampleData(), 10);
  for (size_t len = 0; len < kCommonHeaderSize; ++len) {
    Bytes b(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(len));
    Packet p;
    EXPECT_EQ(decodeBytes(b, p), DecodeError::Truncated) << len;
  }
}

TEST(WireDecode, TruncatedAtEveryLengthBelowEachHeader) {
  for (PacketType t : kAllTypes) {
    SCOPED_TRACE(toString(t));
    // A valid packet of the type, padded so that only the length can be at fault.
    Bytes full(kMaxHeaderSize + 16, 0);
    switch (t) {
      case PacketType::Data: full = dataPacket(sampleData(), 16); break;
      case PacketType::Grant: encodeGrant(full, sampleCommon(), {}); break;
      case PacketType::Resend: encodeResend(full, sampleCommon(), {}); break;
      case PacketType::Cutoffs: encodeCutoffs(full, sampleCommon(), {}); break;
      case PacketType::Ack: encodeAck(full, sampleCommon(), {}); break;
      default: encodeEmpty(full, sampleCommon(t)); break;
    }
    Packet p;
    ASSERT_EQ(decodeBytes(full, p), DecodeError::Ok);
    for (size_t len = 0; len < headerSize(t); ++len) {
      // Exactly-sized heap copy so that any over-read is caught by the sanitizer.
      auto copy = std::make_unique<uint8_t[]>(len + 1);
      std::copy(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(len), copy.get());
      EXPECT_EQ(decode({copy.get(), len}, kMax, p), DecodeError::Truncated) << len;
    }
    EXPECT_EQ(decode({full.data(), headerSize(t)}, kMax, p),
              t == PacketType::Data ? DecodeError::EmptyPayload : DecodeError::Ok);
  }
}

TEST(WireDecode, UnknownType) {
  for (uint8_t type : {0x00, 0x01, 0x0F, 0x19, 0x20, 0x80, 0xFF}) {
    Bytes b(kMaxHeaderSize + 100, 0);
    b[11] = type;
    Packet p;
    EXPECT_EQ(decodeBytes(b, p), DecodeError::UnknownType) << static_cast<int>(type);
  }
}

TEST(WireDecode, DataZeroMessageLength) {
  DataHeader d = sampleData();
  d.messageLength = 0;
  d.offset = 0;
  Packet p;
  EXPECT_EQ(decodeBytes(dataPacket(d, 1), p), DecodeError::ZeroMessageLength);
}

TEST(WireDecode, DataMessageTooLong) {
  DataHeader d = sampleData();
  d.offset = 0;
  d.messageLength = kMax;
  Packet p;
  EXPECT_EQ(decodeBytes(dataPacket(d, 100), p, kMax), DecodeError::Ok);
  d.messageLength = kMax + 1;
  EXPECT_EQ(decodeBytes(dataPacket(d, 100), p, kMax), DecodeError::MessageTooLong);
  d.messageLength = 0xFFFFFFFF;
  EXPECT_EQ(decodeBytes(dataPacket(d, 100), p, kMax), DecodeError::MessageTooLong);
  // A larger configured limit admits it.
  EXPECT_EQ(decodeBytes(dataPacket(d, 100), p, 0xFFFFFFFF), DecodeError::Ok);
}

TEST(WireDecode, DataEmptyPayload) {
  Packet p;
  EXPECT_EQ(decodeBytes(dataPacket(sampleData(), 0), p), DecodeError::EmptyPayload);
}

TEST(WireDecode, DataOffsetMismatch) {
  Bytes b = dataPacket(sampleData(), 100);
  setBe32(b, 4, sampleData().offset + 1);  // sequence
  Packet p;
  EXPECT_EQ(decodeBytes(b, p), DecodeError::OffsetMismatch);
}

TEST(WireDecode, DataBeyondMessage) {
  DataHeader d = sampleData();
  d.messageLength = 1000;
  d.offset = 900;
  Packet p;
  EXPECT_EQ(decodeBytes(dataPacket(d, 100), p), DecodeError::Ok);  // ends exactly at 1000
  EXPECT_EQ(decodeBytes(dataPacket(d, 101), p), DecodeError::BeyondMessage);
  d.offset = 1000;
  EXPECT_EQ(decodeBytes(dataPacket(d, 1), p), DecodeError::BeyondMessage);
}

TEST(WireDecode, DataBeyondMessageDoesNotWrapAround) {
  // 0xFFFFFFF0 + 32 wraps to 16 in 32-bit arithmetic, which would look in range.
  DataHeader d = sampleData();
  d.messageLength = 0xFFFFFFFF;
  d.offset = 0xFFFFFFF0;
  Packet p;
  EXPECT_EQ(decodeBytes(dataPacket(d, 32), p, 0xFFFFFFFF), DecodeError::BeyondMessage);
  EXPECT_EQ(decodeBytes(dataPacket(d, 15), p, 0xFFFFFFFF), DecodeError::Ok);
}

TEST(WireDecode, DataPayloadPointsIntoInput) {
  Bytes b = dataPacket(sampleData(), 300);
  Packet p;
  ASSERT_EQ(decodeBytes(b, p), DecodeError::Ok);
  EXPECT_EQ(p.payload.data(), b.data() + kDataHeaderSize);
  EXPECT_EQ(p.payload.size(), 300u);
  EXPECT_EQ(p.payload[299], static_cast<uint8_t>(299));
}

TEST(WireDecode, DataRetransmitIsAnyNonZeroByte) {
  DataHeader d = sampleData();
  d.retransmit = false;
  Bytes b = dataPacket(d, 10);
  Packet p;
  ASSERT_EQ(decodeBytes(b, p), DecodeError::Ok);
  EXPECT_FALSE(p.data.retransmit);
  b[48] = 0x80;
  ASSERT_EQ(decodeBytes(b, p), DecodeError::Ok);
  EXPECT_TRUE(p.data.retransmit);
}

TEST(WireDecode, GrantBadPriority) {
  Bytes b = grantPacket({.offset = 100, .priority = 7});
  Packet p;
  EXPECT_EQ(decodeBytes(b, p), DecodeError::Ok);
  for (uint8_t prio : {8, 9, 0xFF}) {
    b[32] = prio;
    EXPECT_EQ(decodeBytes(b, p), DecodeError::BadPriority) << static_cast<int>(prio);
  }
}

TEST(WireDecode, GrantBadOffset) {
  Packet p;
  EXPECT_EQ(decodeBytes(grantPacket({.offset = kMax, .priority = 0}), p), DecodeError::Ok);
  EXPECT_EQ(decodeBytes(grantPacket({.offset = kMax + 1, .priority = 0}), p),
            DecodeError::BadGrantOffset);
  EXPECT_EQ(decodeBytes(grantPacket({.offset = 0xFFFFFFFF, .priority = 0}), p),
            DecodeError::BadGrantOffset);
}

TEST(WireDecode, ResendBadPriority) {
  Bytes b = resendPacket({.offset = 0, .length = 100, .priority = 0});
  b[36] = 8;
  Packet p;
  EXPECT_EQ(decodeBytes(b, p), DecodeError::BadPriority);
}

TEST(WireDecode, ResendBadRange) {
  Packet p;
  EXPECT_EQ(decodeBytes(resendPacket({.offset = kMax - 10, .length = 10}), p), DecodeError::Ok);
  EXPECT_EQ(decodeBytes(resendPacket({.offset = kMax - 10, .length = 11}), p),
            DecodeError::BadResendRange);
  EXPECT_EQ(decodeBytes(resendPacket({.offset = kMax + 1, .length = 0}), p),
            DecodeError::BadResendRange);
  // Wraps to 1 in 32-bit arithmetic.
  EXPECT_EQ(decodeBytes(resendPacket({.offset = 0xFFFFFFFF, .length = 2}), p, 0xFFFFFFFF),
            DecodeError::BadResendRange);
}

TEST(WireDecode, AckBadCount) {
  AckHeader a;
  a.numAcks = kMaxAcksPerPacket;
  Bytes b = ackPacket(a);
  Packet p;
  EXPECT_EQ(decodeBytes(b, p), DecodeError::Ok);
  for (uint16_t n : {6, 0x100, 0xFFFF}) {
    setBe16(b, 28, n);
    EXPECT_EQ(decodeBytes(b, p), DecodeError::BadAckCount) << n;
  }
}

TEST(WireDecode, TrailingBytesAfterControlHeadersIgnored) {
  Bytes b = grantPacket({.offset = 77, .priority = 2});
  b.resize(b.size() + 50, 0xEE);
  Packet p;
  ASSERT_EQ(decodeBytes(b, p), DecodeError::Ok);
  EXPECT_EQ(p.grant.offset, 77u);
  EXPECT_TRUE(p.payload.empty());

  Bytes busy(kCommonHeaderSize + 9, 0xEE);
  ASSERT_EQ(encodeEmpty(busy, sampleCommon(PacketType::Busy)), kCommonHeaderSize);
  ASSERT_EQ(decodeBytes(busy, p), DecodeError::Ok);
  EXPECT_TRUE(p.payload.empty());
}

TEST(WireDecode, UnalignedInput) {
  const Bytes src = dataPacket(sampleData(), 64);
  Bytes shifted(src.size() + 1);
  std::copy(src.begin(), src.end(), shifted.begin() + 1);
  Packet p;
  ASSERT_EQ(decode({shifted.data() + 1, src.size()}, kMax, p), DecodeError::Ok);
  EXPECT_EQ(p.data, sampleData());
  EXPECT_EQ(p.common.senderId, sampleCommon().senderId);
}

TEST(WireNames, AllDistinctAndNonNull) {
  std::vector<std::string> names;
  for (int e = 0; e < static_cast<int>(DecodeError::Count_); ++e) {
    const char* n = toString(static_cast<DecodeError>(e));
    ASSERT_NE(n, nullptr);
    names.emplace_back(n);
  }
  for (PacketType t : kAllTypes) names.emplace_back(toString(t));
  std::sort(names.begin(), names.end());
  EXPECT_EQ(std::adjacent_find(names.begin(), names.end()), names.end());
  EXPECT_STREQ(toString(DecodeError::BadResendRange), "BadResendRange");
  EXPECT_STREQ(toString(PacketType::RpcUnknown), "RPC_UNKNOWN");
  EXPECT_STREQ(toString(static_cast<PacketType>(0x42)), "UNKNOWN");
  EXPECT_NE(toString(DecodeError::Count_), nullptr);
}

// ---- Randomised ----

// Re-encodes a decoded packet; returns the full packet bytes (payload appended for DATA).
Bytes reencode(const Packet& p) {
  Bytes b(kMaxHeaderSize);
  size_t n = 0;
  switch (p.common.type) {
    case PacketType::Data: n = encodeData(b, p.common, p.data); break;
    case PacketType::Grant: n = encodeGrant(b, p.common, p.grant); break;
    case PacketType::Resend: n = encodeResend(b, p.common, p.resend); break;
    case PacketType::Cutoffs: n = encodeCutoffs(b, p.common, p.cutoffs); break;
    case PacketType::Ack: n = encodeAck(b, p.common, p.ack); break;
    default: n = encodeEmpty(b, p.common); break;
  }
  b.resize(n);
  b.insert(b.end(), p.payload.begin(), p.payload.end());
  return b;
}

TEST(WireRandom, DecodeNeverCrashesAndOkPacketsAreSane) {
  uint64_t seed = static_cast<uint64_t>(GTEST_FLAG_GET(random_seed));
  if (seed == 0) seed = 0x486F6D61;  // fixed default so failures reproduce
  std::cout << "[ seed     ] " << seed << " (rerun with --gtest_random_seed=" << seed
            << ")\n";
  RecordProperty("seed", std::to_string(seed));
  std::mt19937_64 rng(seed);
  auto below = [&rng](uint64_t n) { return static_cast<uint32_t>(rng() % n); };
  const std::array<uint32_t, 4> limits = {0, 1000, kMax, 0xFFFFFFFF};

  std::array<int, 256> okByType{};
  int ok = 0;
  for (int iter = 0; iter < 100'000; ++iter) {
    SCOPED_TRACE(iter);
    const size_t len = below(8) == 0 ? below(2000) : below(kMaxHeaderSize + 64);
    auto buf = std::make_unique<uint8_t[]>(len);
    for (size_t i = 0; i < len; ++i) buf[i] = static_cast<uint8_t>(rng());
    // Steer most buffers towards plausible packets so every validation path is reached.
    if (len > 11 && below(8) != 0) buf[11] = static_cast<uint8_t>(kAllTypes[below(9)]);
    if (len >= kDataHeaderSize && below(2) == 0) {
      buf[28] = buf[29] = 0;  // message length below 64 KiB
      buf[52] = buf[53] = 0;
      for (int i = 0; i < 4; ++i) buf[4 + i] = buf[52 + i];  // sequence = offset
    }
    if (len >= kGrantSize && below(2) == 0) {
      buf[28] = buf[29] = 0;
      buf[32] &= 0x07;  // GRANT priority; RESEND length high bytes
    }
    if (len >= kResendSize && below(2) == 0) buf[36] &= 0x07;  // RESEND priority
    const uint32_t max = limits[below(limits.size())];

    Packet p;
    const DecodeError err = decode({buf.get(), len}, max, p);
    ASSERT_LT(static_cast<int>(err), static_cast<int>(DecodeError::Count_));
    if (err != DecodeError::Ok) continue;
    ++ok;
    ++okByType[static_cast<uint8_t>(p.common.type)];
    ASSERT_GE(len, headerSize(p.common.type));
    ASSERT_NE(headerSize(p.common.type), 0u);
    switch (p.common.type) {
      case PacketType::Data:
        ASSERT_GT(p.data.messageLength, 0u);
        ASSERT_LE(p.data.messageLength, max);
        ASSERT_FALSE(p.payload.empty());
        ASSERT_EQ(p.payload.data(), buf.get() + kDataHeaderSize);
        ASSERT_EQ(p.payload.size(), len - kDataHeaderSize);
        ASSERT_EQ(p.common.sequence, p.data.offset);
        ASSERT_LE(uint64_t{p.data.offset} + p.payload.size(), p.data.messageLength);
        break;
      case PacketType::Grant:
        ASSERT_LT(p.grant.priority, kNumPriorities);
        ASSERT_LE(p.grant.offset, max);
        break;
      case PacketType::Resend:
        ASSERT_LT(p.resend.priority, kNumPriorities);
        if (p.resend.length != kResendAll) {
          ASSERT_LE(uint64_t{p.resend.offset} + p.resend.length, max);
        }
        break;
      case PacketType::Ack:
        ASSERT_LE(p.ack.numAcks, kMaxAcksPerPacket);
        break;
      default:
        ASSERT_TRUE(p.payload.empty());
        break;
    }
    // Whatever decodes must survive a re-encode unchanged.
    const Bytes again = reencode(p);
    Packet q;
    ASSERT_EQ(decodeBytes(again, q, max), DecodeError::Ok);
    ASSERT_EQ(q.common, p.common);
    ASSERT_EQ(q.data, p.data);
    ASSERT_EQ(q.grant, p.grant);
    ASSERT_EQ(q.resend, p.resend);
    ASSERT_EQ(q.cutoffs, p.cutoffs);
    ASSERT_EQ(q.ack, p.ack);
    ASSERT_TRUE(std::equal(q.payload.begin(), q.payload.end(), p.payload.begin(),
                           p.payload.end()));
  }
  // The steering must reach the Ok path of every type, or the checks above prove little.
  for (PacketType t : kAllTypes) {
    EXPECT_GT(okByType[static_cast<uint8_t>(t)], 0) << toString(t);
  }
  std::cout << "[ ok       ] " << ok << " of 100000 decoded\n";
}

}  // namespace
}  // namespace homa::wire
