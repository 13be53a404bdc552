// A minimal reader of the protobuf wire format (enough for SentencePiece's ModelProto): walks the fields of
// one message over a borrowed byte range. Every read is bounds-checked; malformed input throws fq::Error
// naming `what` (the file and the message being read), never reads out of range.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace fq::pb {

enum class WireType : uint8_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

class Reader {
 public:
  Reader(const uint8_t* data, size_t size, std::string what) : p_(data), end_(data + size), what_(std::move(what)) {}

  // Advances to the next field; false at the end of the message.
  bool next();
  uint32_t field() const { return field_; }
  WireType wire_type() const { return wire_; }

  // Payload of the current field (each checks the wire type).
  uint64_t varint();
  int32_t int32() { return static_cast<int32_t>(varint()); }  // proto int32: two's complement in 64 bits
  bool boolean() { return varint() != 0; }
  float fixed_float();
  std::string_view bytes();
  // A nested message as a Reader over its bytes, described as `what`.
  Reader message(const std::string& what);
  // Skips the payload of the current field.
  void skip();

 private:
  uint64_t raw_varint();
  void expect(WireType w);

  const uint8_t* p_;
  const uint8_t* end_;
  std::string what_;
  uint32_t field_ = 0;
  WireType wire_ = WireType::kVarint;
  bool consumed_ = true;
};

}  // namespace fq::pb
