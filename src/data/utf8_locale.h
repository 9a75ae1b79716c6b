// Switches the calling thread to the C.UTF-8 locale for the lifetime of the object (uselocale,
// thread-local: other threads and the process locale are untouched). libarchive converts tar
// member names between UTF-8 and the current locale's charset; in the plain "C" locale it cannot
// convert non-ASCII names and crashes (libarchive 3.6, pax writer given a UTF-8-only name) or
// returns no UTF-8 name. If C.UTF-8 is missing, nothing changes.
#pragma once
#include <locale.h>

namespace hwaga::data {

class Utf8LocaleScope {
 public:
  Utf8LocaleScope() {
    static const locale_t utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", locale_t(0));
    if (utf8) old_ = uselocale(utf8);
  }
  ~Utf8LocaleScope() {
    if (old_) uselocale(old_);
  }
  Utf8LocaleScope(const Utf8LocaleScope&) = delete;
  Utf8LocaleScope& operator=(const Utf8LocaleScope&) = delete;

 private:
  locale_t old_ = locale_t(0);
};

}  // namespace hwaga::data
