// Errors: one exception type carrying a message that names the file/field, what was
// expected and what was found. HWAGA_CHECK adds the source location for internal faults.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace hwaga {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

// Throws hwaga::Error with the pieces streamed together: fail("file ", path, ": bad magic").
template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(detail::concat(std::forward<Args>(args)...));
}

}  // namespace hwaga

// Internal invariant or user-input check; the message says what was expected.
#define HWAGA_CHECK(cond, ...)                                                        \
  do {                                                                               \
    if (!(cond)) ::hwaga::fail(__VA_ARGS__, " [", __FILE__, ":", __LINE__, "]");    \
  } while (0)
