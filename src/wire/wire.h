// Homa packet layouts: encode, decode and validate.
//
// The layout is the Linux kernel module's: a 28-byte common header shaped like a TCP
// header (so NICs will segment DATA with TSO), followed by a per-type body. Every
// multi-byte field is big-endian. This module holds no state, does no I/O and never
// allocates; decoded DATA payloads point into the caller's buffer.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace homa::wire {

enum class PacketType : uint8_t {
  Data = 0x10,
  Grant = 0x11,
  Resend = 0x12,
  RpcUnknown = 0x13,
  Busy = 0x14,
  Cutoffs = 0x15,
  Freeze = 0x16,
  NeedAck = 0x17,
  Ack = 0x18,
};

// Total header sizes (common header included).
inline constexpr size_t kCommonHeaderSize = 28;
inline constexpr size_t kDataHeaderSize = 56;
inline constexpr size_t kGrantSize = 33;
inline constexpr size_t kResendSize = 37;
inline constexpr size_t kCutoffsSize = 62;
inline constexpr size_t kAckPacketSize = 80;
inline constexpr size_t kMaxHeaderSize = 80;

inline constexpr int kNumPriorities = 8;
inline constexpr int kMaxAcksPerPacket = 5;

// RESEND length meaning "everything sent so far".
inline constexpr uint32_t kResendAll = 0xFFFFFFFF;

// CommonHeader::flags of an RPC_UNKNOWN from a server: the server has used this client
// id already (it may have executed the request, or lost track of it below its
// at-most-once window), so it will not serve a new copy of the request: the client
// ends the call instead of sending the request again.
inline constexpr uint8_t kFlagIdUsed = 0x01;
// CommonHeader::flags of a client's DATA: the request is being sent again after the
// server said it had no state for it (RPC_UNKNOWN). A server admits such a copy of a
// request whose id fell below its at-most-once window only if it told this client, a
// moment before, that it never ran it (see engine/seen_ids.h); a late copy of an original
// transmission never is.
inline constexpr uint8_t kFlagRestarted = 0x02;
// CommonHeader::flags of an RPC_UNKNOWN flagged kFlagIdUsed, as well: the id lies far
// below the oldest id the server knows of from this client address. The client's ids
// are behind those an earlier process at its address used (a restart with a clock that
// now reads earlier): it makes its next ids jump ahead (Engine::skipClientIdsAhead).
inline constexpr uint8_t kFlagIdsBehind = 0x04;

struct CommonHeader {
  uint16_t sport = 0;
  uint16_t dport = 0;
  // DATA: offset of the segment's first byte. Encoders overwrite it for DATA so the two
  // copies of the offset cannot disagree.
  uint32_t sequence = 0;
  PacketType type = PacketType::Data;
  uint8_t flags = 0;  // kFlagIdUsed, kFlagIdsBehind (RPC_UNKNOWN), kFlagRestarted (DATA); 0 otherwise
  // The sender's id for the RPC; the receiver looks up senderId ^ 1.
  uint64_t senderId = 0;

  bool operator==(const CommonHeader&) const = default;
};

struct AckEntry {
  uint64_t clientId = 0;  // 0 = no ack
  uint16_t serverPort = 0;

  bool operator==(const AckEntry&) const = default;
};

struct DataHeader {
  uint32_t messageLength = 0;
  // Bytes the sender will send without further grants.
  uint32_t incoming = 0;
  AckEntry ack;
  uint16_t cutoffVersion = 0;
  bool retransmit = false;
  uint32_t offset = 0;  // of the first payload byte within the message

  bool operator==(const DataHeader&) const = default;
};

struct GrantHeader {
  uint32_t offset = 0;   // the sender may send bytes below this
  uint8_t priority = 0;  // for those bytes

  bool operator==(const GrantHeader&) const = default;
};

struct ResendHeader {
  uint32_t offset = 0;
  uint32_t length = 0;  // kResendAll = everything sent so far
  uint8_t priority = 0;

  bool operator==(const ResendHeader&) const = default;
};

struct CutoffsHeader {
  std::array<uint32_t, kNumPriorities> cutoffs{};
  uint16_t version = 0;

  bool operator==(const CutoffsHeader&) const = default;
};

struct AckHeader {
  uint16_t numAcks = 0;
  // Only the first numAcks entries are meaningful; decode leaves the rest zero.
  std::array<AckEntry, kMaxAcksPerPacket> acks{};

  bool operator==(const AckHeader&) const = default;
};

// Result of decode; only common, payload and the member matching common.type are
// meaningful: decode resets those and leaves the others as they were (a Packet used for
// several decodes keeps stale values in them).
struct Packet {
  CommonHeader common;
  DataHeader data;
  GrantHeader grant;
  ResendHeader resend;
  CutoffsHeader cutoffs;
  AckHeader ack;
  // DATA only: the bytes after the 56-byte header, pointing into decode's input.
  std::span<const uint8_t> payload;
};

enum class DecodeError : uint8_t {
  Ok,
  Truncated,
  UnknownType,
  ZeroMessageLength,
  MessageTooLong,
  EmptyPayload,
  OffsetMismatch,
  BeyondMessage,
  BadPriority,
  BadAckCount,
  BadGrantOffset,
  BadResendRange,
  Count_,
};

// Names for logs and metrics; never null.
const char* toString(DecodeError error);
const char* toString(PacketType type);

// Total header size for `type` (common header included), or 0 if `type` is not one of
// the nine packet types.
size_t headerSize(PacketType type);

// Decodes and validates one packet. Every field is treated as hostile: never reads out of
// bounds and never trusts a length. `out`'s common header, payload and the member of the
// packet's type are reset first; on an error it may hold the fields read so far (for
// logging) and must not be acted on. Bytes after a control packet's header are ignored.
DecodeError decode(std::span<const uint8_t> bytes, uint32_t maxMessageLength, Packet& out);

// Encoders write only the header (a DATA payload is carried separately by the caller)
// into `out`, which must be at least the header size, and return the number of bytes
// written, or 0 if `out` is too small. Each sets the packet type itself; unused fields
// are written as zero.
size_t encodeData(std::span<uint8_t> out, const CommonHeader& common, const DataHeader& data);
size_t encodeGrant(std::span<uint8_t> out, const CommonHeader& common,
                   const GrantHeader& grant);
size_t encodeResend(std::span<uint8_t> out, const CommonHeader& common,
                    const ResendHeader& resend);
size_t encodeCutoffs(std::span<uint8_t> out, const CommonHeader& common,
                     const CutoffsHeader& cutoffs);
// Also returns 0 if ack.numAcks > kMaxAcksPerPacket: there are no entries to send.
size_t encodeAck(std::span<uint8_t> out, const CommonHeader& common, const AckHeader& ack);
// For the body-less types (RPC_UNKNOWN, BUSY, FREEZE, NEED_ACK), taken from common.type;
// returns 0 for any other type.
size_t encodeEmpty(std::span<uint8_t> out, const CommonHeader& common);

}  // namespace homa::wire
