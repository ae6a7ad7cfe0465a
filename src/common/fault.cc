#include "common/fault.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace spare::fault {
namespace {

struct Spec {
  std::string point;  // empty: nothing armed
  long nth = 0;
};

const Spec& Armed() {
  static const Spec spec = [] {
    Spec s;
    const char* v = std::getenv("SPARE_FAULT");
    if (!v || !*v) return s;
    std::string text(v);
    const auto colon = text.rfind(':');
    char* end = nullptr;
    const long n = colon == std::string::npos ? 0 : std::strtol(text.c_str() + colon + 1, &end, 10);
    if (colon == std::string::npos || n < 1 || (end && *end)) {
      std::fprintf(stderr, "spare: SPARE_FAULT=%s ignored: expected POINT:N with N >= 1\n", v);
      return s;
    }
    s.point = text.substr(0, colon);
    s.nth = n;
    std::fprintf(stderr, "spare: SPARE_FAULT armed: SIGKILL at pass %ld through %s\n", n,
                 s.point.c_str());
    return s;
  }();
  return spec;
}

}  // namespace

bool Armed(std::string_view point) { return !Armed().point.empty() && Armed().point == point; }

void At(std::string_view point) {
  static std::atomic<long> passes{0};
  if (!Armed(point)) return;
  if (passes.fetch_add(1) + 1 == Armed().nth) {
    static const char msg[] = "spare: SPARE_FAULT reached: SIGKILL\n";
    (void)!::write(2, msg, sizeof(msg) - 1);
    ::kill(::getpid(), SIGKILL);
  }
}

}  // namespace spare::fault
