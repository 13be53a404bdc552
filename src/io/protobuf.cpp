#include "io/protobuf.h"

#include <cstring>

#include "flatquant/error.h"

namespace fq::pb {

uint64_t Reader::raw_varint() {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    FQ_CHECK(p_ < end_, "{}: truncated varint", what_);
    const uint8_t b = *p_++;
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  fail("{}: malformed varint (more than 10 bytes)", what_);
}

bool Reader::next() {
  if (!consumed_) skip();
  if (p_ == end_) return false;
  const uint64_t key = raw_varint();
  const uint64_t w = key & 7;
  FQ_CHECK(w == 0 || w == 1 || w == 2 || w == 5, "{}: unsupported wire type {} (expected 0, 1, 2 or 5)", what_, w);
  FQ_CHECK((key >> 3) != 0 && (key >> 3) <= 0x1fffffff, "{}: invalid field number {}", what_, key >> 3);
  field_ = static_cast<uint32_t>(key >> 3);
  wire_ = static_cast<WireType>(w);
  consumed_ = false;
  return true;
}

void Reader::expect(WireType w) {
  FQ_CHECK(!consumed_, "{}: field {} read twice", what_, field_);
  FQ_CHECK(wire_ == w, "{}: field {}: wire type {} (expected {})", what_, field_, static_cast<int>(wire_),
           static_cast<int>(w));
  consumed_ = true;
}

uint64_t Reader::varint() {
  expect(WireType::kVarint);
  return raw_varint();
}

float Reader::fixed_float() {
  expect(WireType::kFixed32);
  FQ_CHECK(end_ - p_ >= 4, "{}: field {}: truncated fixed32", what_, field_);
  uint32_t u = static_cast<uint32_t>(p_[0]) | static_cast<uint32_t>(p_[1]) << 8 |
               static_cast<uint32_t>(p_[2]) << 16 | static_cast<uint32_t>(p_[3]) << 24;
  p_ += 4;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::string_view Reader::bytes() {
  expect(WireType::kLengthDelimited);
  const uint64_t n = raw_varint();
  FQ_CHECK(n <= static_cast<uint64_t>(end_ - p_), "{}: field {}: length {} runs past the end ({} bytes left)", what_,
           field_, n, end_ - p_);
  std::string_view s(reinterpret_cast<const char*>(p_), static_cast<size_t>(n));
  p_ += n;
  return s;
}

Reader Reader::message(const std::string& what) {
  const std::string_view b = bytes();
  return Reader(reinterpret_cast<const uint8_t*>(b.data()), b.size(), what);
}

void Reader::skip() {
  switch (wire_) {
    case WireType::kVarint: varint(); break;
    case WireType::kFixed32: fixed_float(); break;
    case WireType::kLengthDelimited: bytes(); break;
    case WireType::kFixed64:
      consumed_ = true;
      FQ_CHECK(end_ - p_ >= 8, "{}: field {}: truncated fixed64", what_, field_);
      p_ += 8;
      break;
  }
}

}  // namespace fq::pb
