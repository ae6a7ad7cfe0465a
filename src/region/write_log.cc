// The registry behind spare::DeclareWrite.
#include "region/write_log.h"

#include <algorithm>

#include "spare/declare.h"

namespace spare {
namespace region {
namespace {

// A plain array, searched linearly: processes map a handful of regions,
// and DeclareWrite runs on every arena call.
WriteLog* g_logs[kMaxWriteLogs];
size_t g_count = 0;

}  // namespace

bool RegisterWriteLog(WriteLog* log) {
  if (g_count == kMaxWriteLogs) return false;
  g_logs[g_count++] = log;
  return true;
}

void UnregisterWriteLog(WriteLog* log) {
  for (size_t i = 0; i < g_count; ++i) {
    if (g_logs[i] == log) {
      g_logs[i] = g_logs[--g_count];
      return;
    }
  }
}

void NormalizeRanges(std::vector<ByteRange>* v) {
  if (v->size() < 2) return;
  std::sort(v->begin(), v->end(),
            [](const ByteRange& a, const ByteRange& b) { return a.offset < b.offset; });
  size_t out = 0;
  for (size_t i = 1; i < v->size(); ++i) {
    ByteRange& last = (*v)[out];
    const ByteRange& r = (*v)[i];
    if (r.offset <= last.end()) {
      last.length = std::max(last.end(), r.end()) - last.offset;
    } else {
      (*v)[++out] = r;
    }
  }
  v->resize(out + 1);
}

}  // namespace region

void DeclareWrite(const void* p, size_t n) noexcept {
  if (n == 0) return;
  const auto a = reinterpret_cast<uintptr_t>(p);
  for (size_t i = 0; i < region::g_count; ++i) {
    region::WriteLog* log = region::g_logs[i];
    if (a >= log->end || a + n <= log->start) continue;
    // Clip to the region: the part outside belongs to no declared region
    // (or to another one, found by its own iteration).
    const uintptr_t lo = std::max(a, log->start);
    const uintptr_t hi = std::min(a + n, log->end);
    log->Add(lo - log->start, hi - lo);
    if (a >= log->start && a + n <= log->end) return;
  }
}

}  // namespace spare
