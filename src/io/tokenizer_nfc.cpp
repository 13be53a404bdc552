#include "io/tokenizer_unicode.h"
namespace fq::tok {
std::string nfc(std::string_view s) { return std::string(s); }
}
