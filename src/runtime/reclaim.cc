#include "runtime/reclaim.h"

#include <errno.h>

#include <algorithm>
#include <cstdlib>
#include <string>

namespace spare {
namespace {

bool Before(const PageSpan& a, const PageSpan& b) {
  return a.region != b.region ? a.region < b.region : a.offset < b.offset;
}

uint64_t End(const PageSpan& s) { return s.offset + s.length; }

constexpr uint64_t kPage = 4096;  // the reclaimer's spans are whole pages

}  // namespace

void NormalizeSpans(std::vector<PageSpan>* v) {
  if (v->empty()) return;
  std::sort(v->begin(), v->end(), Before);
  size_t out = 0;
  for (size_t i = 1; i < v->size(); ++i) {
    PageSpan& last = (*v)[out];
    const PageSpan& s = (*v)[i];
    if (s.region == last.region && s.offset <= End(last)) {
      last.length = std::max(End(last), End(s)) - last.offset;
    } else {
      (*v)[++out] = s;
    }
  }
  v->resize(out + 1);
}

std::vector<PageSpan> UnionSpans(std::span<const PageSpan> a, std::span<const PageSpan> b) {
  std::vector<PageSpan> v(a.begin(), a.end());
  v.insert(v.end(), b.begin(), b.end());
  NormalizeSpans(&v);
  return v;
}

std::vector<PageSpan> SubtractSpans(std::span<const PageSpan> a, std::span<const PageSpan> b) {
  std::vector<PageSpan> out;
  size_t j = 0;
  for (PageSpan cur : a) {
    // Skip b spans wholly before cur.
    while (j < b.size() && (b[j].region < cur.region ||
                            (b[j].region == cur.region && End(b[j]) <= cur.offset))) {
      ++j;
    }
    size_t k = j;
    while (cur.length > 0 && k < b.size() && b[k].region == cur.region &&
           b[k].offset < End(cur)) {
      if (b[k].offset > cur.offset) out.push_back({cur.region, cur.offset, b[k].offset - cur.offset});
      const uint64_t end = End(cur);
      const uint64_t cut = std::min(end, End(b[k]));
      cur.length = end - std::max(cur.offset, cut);
      cur.offset = std::max(cur.offset, cut);
      ++k;
    }
    if (cur.length > 0) out.push_back(cur);
  }
  return out;
}

void Reclaimer::MarkDropped(const PageSpan& s) {
  if (s.region >= bits_.size()) bits_.resize(s.region + 1);
  std::vector<uint64_t>& cur = bits_[s.region].cur;
  const uint64_t first = s.offset / kPage, end = (s.offset + s.length + kPage - 1) / kPage;
  if (cur.size() < (end + 63) / 64) cur.resize((end + 63) / 64);
  for (uint64_t p = first; p < end; ++p) cur[p / 64] |= uint64_t{1} << (p % 64);
  drops_[0] += end - first;
}

void Reclaimer::CountRefaults(const PageSpan& s) {
  if (s.region >= bits_.size()) return;
  DropBits& b = bits_[s.region];
  const uint64_t first = s.offset / kPage, end = (s.offset + s.length + kPage - 1) / kPage;
  std::vector<uint64_t>* sets[2] = {&b.cur, &b.prev};
  for (int g = 0; g < 2; ++g) {
    std::vector<uint64_t>& v = *sets[g];
    const uint64_t stop = std::min<uint64_t>(end, v.size() * 64);
    for (uint64_t p = first; p < stop; ++p) {
      uint64_t& word = v[p / 64];
      const uint64_t bit = uint64_t{1} << (p % 64);
      if (word & bit) {
        word &= ~bit;
        ++refaults_[g];
        ++refaults_total_;
      }
    }
  }
}

// At a swap the pages dropped in the interval before last have had one to
// two intervals to come back. If more than one in eight did, the window
// was too short: their reuse interval is about the window, so a longer one
// saves those drops and faults (random SETs over 1 GiB came back at 17%
// with -P 1 and 40% with -P 16, at a 1 s window). If fewer than one in 32
// did, it may shrink. Fewer than 64 such drops change nothing, so a quiet
// program keeps its window.
void Reclaimer::Adapt() {
  const uint64_t max_window =
      options_.max_clean_after_ns ? options_.max_clean_after_ns : 16 * options_.clean_after_ns;
  if (drops_[1] >= 64) {
    if (8 * refaults_[1] > drops_[1]) {
      window_ns_ = std::min(max_window, 2 * window_ns_);
    } else if (32 * refaults_[1] < drops_[1]) {
      window_ns_ = std::max(options_.clean_after_ns, window_ns_ / 2);
    }
  }
  for (DropBits& b : bits_) {
    std::swap(b.prev, b.cur);
    std::fill(b.cur.begin(), b.cur.end(), 0);
  }
  drops_[1] = drops_[0];
  refaults_[1] = refaults_[0];
  drops_[0] = refaults_[0] = 0;
}

void Reclaimer::Written(uint64_t epoch, std::span<const PageSpan> spans) {
  if (!enabled() || spans.empty()) return;
  if (drops_[0] + drops_[1] != 0) {
    for (const PageSpan& s : spans) CountRefaults(s);
  }
  young_.insert(young_.end(), spans.begin(), spans.end());
  young_max_epoch_ = std::max(young_max_epoch_, epoch);
  if (!droppable_.empty()) droppable_ = SubtractSpans(droppable_, spans);
}

void Reclaimer::Advance(uint64_t durable, uint64_t now_ns) {
  if (!enabled()) return;
  if (!started_) {
    started_ = true;
    interval_start_ns_ = now_ns;
  }
  // Swap generations once an interval has passed and every epoch of the
  // old generation is in the image (else keep accumulating: not yet).
  if (now_ns - interval_start_ns_ >= window_ns_ && durable >= old_max_epoch_) {
    Adapt();
    NormalizeSpans(&young_);
    if (!old_.empty()) droppable_ = UnionSpans(droppable_, SubtractSpans(old_, young_));
    old_ = std::move(young_);
    young_.clear();
    old_max_epoch_ = young_max_epoch_;
    interval_start_ns_ = now_ns;
  }
}

void Reclaimer::Take(uint64_t durable, uint64_t now_ns, std::vector<PageSpan>* out, Budget budget) {
  if (!enabled()) return;
  Advance(durable, now_ns);
  const bool idle = budget == Budget::kIdle;
  const uint64_t max_bytes = idle ? options_.idle_budget_bytes : options_.budget_bytes;
  const size_t max_spans = idle ? options_.idle_budget_spans : options_.budget_spans;
  uint64_t bytes = 0;
  size_t taken = 0;
  const size_t first_out = out->size();
  while (taken < droppable_.size() && taken < max_spans && bytes < max_bytes) {
    PageSpan s = droppable_[taken];
    const uint64_t room = max_bytes - bytes;
    if (s.length > room) {  // split: the rest waits for the next Take
      droppable_[taken].offset += room;
      droppable_[taken].length -= room;
      s.length = room;
      out->push_back(s);
      bytes += room;
      break;
    }
    out->push_back(s);
    bytes += s.length;
    ++taken;
  }
  for (const PageSpan& s : std::span(*out).subspan(first_out)) MarkDropped(s);
  droppable_.erase(droppable_.begin(), droppable_.begin() + static_cast<ptrdiff_t>(taken));
}

uint64_t Reclaimer::NextWakeNs(uint64_t now_ns) const {
  if (!enabled()) return UINT64_MAX;
  if (!droppable_.empty()) return now_ns;
  if (young_.empty() && old_.empty()) return UINT64_MAX;
  const uint64_t swap = interval_start_ns_ + window_ns_;
  return swap > now_ns ? swap : now_ns + window_ns_;
}

uint64_t Reclaimer::droppable_bytes() const {
  uint64_t n = 0;
  for (const PageSpan& s : droppable_) n += s.length;
  return n;
}

Result<uint64_t> DropCleanAfterNsFromEnv() {
  const char* v = std::getenv("SPARE_DROP_CLEAN_MS");
  if (!v || !*v) return uint64_t{1'000'000'000};
  char* end = nullptr;
  errno = 0;
  const unsigned long long ms = std::strtoull(v, &end, 10);
  if (*end != '\0' || errno != 0 || v[0] == '-' || ms > 86'400'000) {
    return Status(Code::kInvalidArgument,
                  "SPARE_DROP_CLEAN_MS=" + std::string(v) +
                      " is not a number of milliseconds in 0..86400000 (0 = keep private "
                      "copies of clean pages)");
  }
  return uint64_t{ms} * 1'000'000;
}

}  // namespace spare
