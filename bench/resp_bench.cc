// resp_bench — a redis-benchmark-like load for any RESP server, with an
// optional `WAIT N 0` after every SET (redis-benchmark cannot send one), so
// redis-server + replica can be measured with each write acknowledged by
// its replicas, as spare's `hot` policy acknowledges each write only once
// the standby has applied it.
//
//   resp_bench [--host=127.0.0.1] [--port=6379] [--clients=50]
//              [--requests=100000] [--pipeline=1] [--keyspace=1]
//              [--value-size=3] [--test=set|get] [--wait-replicas=0]
//              [--seed=1] [--timeout-s=300]
//
// One thread, one poll loop over --clients connections (like
// redis-benchmark). Each connection sends a batch of --pipeline requests in
// one write, reads every reply of the batch, then sends the next batch,
// until --requests requests have been answered in all. A request is
//   set: SET key:%012d <value-size x 'x'>, and with --wait-replicas=W also
//        WAIT W 0 right behind it: the pair is one request;
//   get: GET key:%012d.
// Keys are uniform over [0, keyspace) from a fixed --seed, named as
// redis-benchmark -r names them, so a data set filled with key:%012d is hit.
//
// Latency of a request: from the write of its batch to the last reply of
// the request (so with --pipeline=16 the 16th request of a batch waits for
// the 15 before it). redis-benchmark instead stamps every request of a
// batch with the time of the batch's first read event; that figure is
// printed too (first_read_*), for comparing the two tools.
//
// Prints one JSON line on stdout: rps, p50/p99/max latency (ms), errors,
// misses. An error is an error reply, a SET reply other than +OK, a WAIT
// reply below W, or any unexpected reply; a miss is a null GET reply. Exit
// 0 only with no errors and no misses; 1 on errors, misses, a closed
// connection or the timeout; 2 on a bad flag.
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  std::string host = "127.0.0.1";
  long port = 6379;
  long clients = 50;
  long requests = 100000;
  long pipeline = 1;
  long keyspace = 1;
  long value_size = 3;
  std::string test = "set";
  long wait_replicas = 0;
  long seed = 1;
  double timeout_s = 300;
};

[[noreturn]] void Usage(const std::string& arg, const char* why) {
  std::fprintf(stderr,
               "resp_bench: bad flag \"%s\": %s\n"
               "usage: resp_bench [--host=H] [--port=P] [--clients=C] [--requests=N] "
               "[--pipeline=P] [--keyspace=K] [--value-size=V] [--test=set|get] "
               "[--wait-replicas=W] [--seed=S] [--timeout-s=T]\n",
               arg.c_str(), why);
  std::exit(2);
}

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "resp_bench: %s\n", why.c_str());
  std::exit(1);
}

double ParseNumber(const std::string& arg, const std::string& text, double lo, double hi) {
  char* end = nullptr;
  errno = 0;
  double x = std::strtod(text.c_str(), &end);
  if (errno != 0 || end == text.c_str() || *end != '\0') Usage(arg, "expected a number");
  if (!(x >= lo && x <= hi)) Usage(arg, "out of range");
  return x;
}

// Accepts --name=value and --name value.
Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string name = a, value;
    if (size_t eq = a.find('='); eq != std::string::npos) {
      name = a.substr(0, eq);
      value = a.substr(eq + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      Usage(a, "missing value");
    }
    auto num = [&](double lo, double hi) { return ParseNumber(a, value, lo, hi); };
    if (name == "--host") {
      f.host = value;
    } else if (name == "--port") {
      f.port = static_cast<long>(num(1, 65535));
    } else if (name == "--clients") {
      f.clients = static_cast<long>(num(1, 10000));
    } else if (name == "--requests") {
      f.requests = static_cast<long>(num(1, 1e9));
    } else if (name == "--pipeline") {
      f.pipeline = static_cast<long>(num(1, 10000));
    } else if (name == "--keyspace") {
      f.keyspace = static_cast<long>(num(1, 1e12));
    } else if (name == "--value-size") {
      f.value_size = static_cast<long>(num(0, 512 << 20));
    } else if (name == "--test") {
      if (value != "set" && value != "get") Usage(a, "expected set or get");
      f.test = value;
    } else if (name == "--wait-replicas") {
      f.wait_replicas = static_cast<long>(num(0, 1000));
    } else if (name == "--seed") {
      f.seed = static_cast<long>(num(0, 1e15));
    } else if (name == "--timeout-s") {
      f.timeout_s = num(0.001, 1e6);
    } else {
      Usage(a, "unknown flag");
    }
  }
  if (f.test == "get" && f.wait_replicas > 0) Usage("--wait-replicas", "only with --test=set");
  return f;
}

// splitmix64: small, fast, and the same sequence for the same seed.
struct Rng {
  uint64_t s;
  uint64_t Next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
};

// One parsed reply. kind is the RESP type byte; for '$' null marks $-1.
struct Reply {
  char kind = 0;
  bool null = false;
  long long integer = 0;
  std::string text;  // simple string or error line (first 200 bytes)
};

// Parses one reply at buf[off...]; returns the bytes it took, 0 if the
// reply is not complete yet, -1 if the bytes are not RESP.
long ParseReply(const std::string& buf, size_t off, Reply* r) {
  size_t eol = buf.find("\r\n", off);
  if (eol == std::string::npos) return 0;
  r->kind = buf[off];
  std::string line = buf.substr(off + 1, eol - off - 1);
  size_t used = eol + 2 - off;
  switch (r->kind) {
    case '+':
    case '-':
      r->text = line.substr(0, 200);
      return static_cast<long>(used);
    case ':':
      r->integer = std::strtoll(line.c_str(), nullptr, 10);
      return static_cast<long>(used);
    case '$': {
      long long n = std::strtoll(line.c_str(), nullptr, 10);
      if (n < 0) {
        r->null = true;
        return static_cast<long>(used);
      }
      size_t total = used + static_cast<size_t>(n) + 2;
      if (buf.size() - off < total) return 0;
      return static_cast<long>(total);
    }
    case '*': {  // not expected from SET, GET or WAIT; consumed whole
      long long n = std::strtoll(line.c_str(), nullptr, 10);
      for (long long i = 0; i < n; ++i) {
        Reply e;
        long k = ParseReply(buf, off + used, &e);
        if (k <= 0) return k;
        used += static_cast<size_t>(k);
      }
      return static_cast<long>(used);
    }
    default:
      return -1;
  }
}

struct Conn {
  int fd = -1;
  std::string out;
  size_t out_off = 0;
  std::string in;
  size_t in_off = 0;
  Clock::time_point start;        // write of the current batch
  Clock::time_point first_read;   // first bytes of its replies
  bool read_seen = false;
  long batch = 0;                 // requests in the current batch
  long replies = 0;               // replies of the current batch parsed
  bool busy = false;
};

int Connect(const Flags& f) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::string port = std::to_string(f.port);
  if (int rc = getaddrinfo(f.host.c_str(), port.c_str(), &hints, &res); rc != 0)
    Die("resolve " + f.host + ": " + gai_strerror(rc));
  int fd = -1;
  for (addrinfo* a = res; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  if (fd < 0) Die("connect " + f.host + ":" + port + ": " + std::strerror(errno));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

double Ms(int64_t ns) { return static_cast<double>(ns) / 1e6; }

double Percentile(const std::vector<int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  double k = static_cast<double>(sorted.size() - 1) * p / 100.0;
  size_t lo = static_cast<size_t>(k);
  size_t hi = std::min(lo + 1, sorted.size() - 1);
  return Ms(sorted[lo]) +
         (Ms(sorted[hi]) - Ms(sorted[lo])) * (k - static_cast<double>(lo));
}

std::string JsonEscape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    o += c;
  }
  return o;
}

class Bench {
 public:
  explicit Bench(const Flags& f) : f_(f), rng_{static_cast<uint64_t>(f.seed)} {
    value_ = std::string(static_cast<size_t>(f.value_size), 'x');
    per_request_ = f.wait_replicas > 0 ? 2 : 1;
    wait_cmd_ = "*3\r\n$4\r\nWAIT\r\n$" + std::to_string(std::to_string(f.wait_replicas).size()) +
                "\r\n" + std::to_string(f.wait_replicas) + "\r\n$1\r\n0\r\n";
    latency_.reserve(static_cast<size_t>(f.requests));
    first_read_.reserve(static_cast<size_t>(f.requests));
  }

  int Run() {
    conns_.resize(static_cast<size_t>(f_.clients));
    for (Conn& c : conns_) c.fd = Connect(f_);
    const Clock::time_point deadline =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(f_.timeout_s));
    t0_ = Clock::now();
    for (Conn& c : conns_) StartBatch(c);
    std::vector<pollfd> pfds(conns_.size());
    while (done_ < f_.requests) {
      for (size_t i = 0; i < conns_.size(); ++i) {
        pfds[i].fd = conns_[i].busy ? conns_[i].fd : -1;
        pfds[i].events =
            static_cast<short>(POLLIN | (conns_[i].out_off < conns_[i].out.size() ? POLLOUT : 0));
        pfds[i].revents = 0;
      }
      int n = poll(pfds.data(), pfds.size(), 100);
      if (n < 0 && errno != EINTR) Die(std::string("poll: ") + std::strerror(errno));
      if (Clock::now() > deadline)
        Die("timeout: " + std::to_string(done_) + " of " + std::to_string(f_.requests) +
            " requests answered within --timeout-s");
      for (size_t i = 0; i < conns_.size() && n > 0; ++i) {
        if (pfds[i].revents == 0) continue;
        Conn& c = conns_[i];
        if (pfds[i].revents & POLLOUT) Flush(c);
        if (pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) Read(c);
      }
    }
    const int64_t wall_ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(t_end_ - t0_).count();
    for (Conn& c : conns_) close(c.fd);
    Print(wall_ns);
    return errors_ == 0 && misses_ == 0 ? 0 : 1;
  }

 private:
  void AppendKeyCommand(std::string* out, const char* cmd) {
    char key[32];
    unsigned long long k = rng_.Next() % static_cast<uint64_t>(f_.keyspace);
    int klen = std::snprintf(key, sizeof(key), "key:%012llu", k);
    *out += cmd;
    *out += "$" + std::to_string(klen) + "\r\n";
    out->append(key, static_cast<size_t>(klen));
    *out += "\r\n";
  }

  void StartBatch(Conn& c) {
    c.batch = std::min(f_.pipeline, f_.requests - issued_);
    if (c.batch <= 0) {
      c.busy = false;
      return;
    }
    issued_ += c.batch;
    c.out.clear();
    c.out_off = 0;
    for (long i = 0; i < c.batch; ++i) {
      if (f_.test == "get") {
        AppendKeyCommand(&c.out, "*2\r\n$3\r\nGET\r\n");
      } else {
        AppendKeyCommand(&c.out, "*3\r\n$3\r\nSET\r\n");
        c.out += "$" + std::to_string(value_.size()) + "\r\n" + value_ + "\r\n";
        if (per_request_ == 2) c.out += wait_cmd_;
      }
    }
    c.replies = 0;
    c.read_seen = false;
    c.busy = true;
    c.start = Clock::now();
    Flush(c);
  }

  void Flush(Conn& c) {
    while (c.out_off < c.out.size()) {
      ssize_t w = send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        Die(std::string("send: ") + std::strerror(errno));
      }
      c.out_off += static_cast<size_t>(w);
    }
  }

  void Read(Conn& c) {
    char buf[1 << 16];
    ssize_t r = recv(c.fd, buf, sizeof(buf), 0);
    if (r == 0) Die("the server closed a connection");
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      Die(std::string("recv: ") + std::strerror(errno));
    }
    const Clock::time_point now = Clock::now();
    if (!c.read_seen) {
      c.read_seen = true;
      c.first_read = now;
    }
    c.in.append(buf, static_cast<size_t>(r));
    while (c.busy) {
      Reply rep;
      long used = ParseReply(c.in, c.in_off, &rep);
      if (used < 0) Die("the server sent bytes that are not RESP");
      if (used == 0) break;
      c.in_off += static_cast<size_t>(used);
      Check(rep, c.replies % per_request_);
      if (++c.replies % per_request_ == 0) {
        latency_.push_back(Ns(now - c.start));
        first_read_.push_back(Ns(c.first_read - c.start));
        ++done_;
        t_end_ = now;
      }
      if (c.replies == c.batch * per_request_) {
        if (c.in_off < c.in.size()) Die("more replies than requests");
        c.in.clear();
        c.in_off = 0;
        StartBatch(c);
      }
    }
    if (c.in_off > (1 << 20)) {
      c.in.erase(0, c.in_off);
      c.in_off = 0;
    }
  }

  // which: 0 = the request's command, 1 = its WAIT.
  void Check(const Reply& r, long which) {
    bool ok;
    if (r.kind == '-') {
      ok = false;
    } else if (f_.test == "get") {
      if (r.kind == '$' && r.null) {
        ++misses_;
        return;
      }
      ok = r.kind == '$';
    } else if (which == 0) {
      ok = r.kind == '+' && r.text == "OK";
    } else {
      ok = r.kind == ':' && r.integer >= f_.wait_replicas;
    }
    if (ok) return;
    if (errors_++ == 0) {
      first_error_ = std::string(1, r.kind) + (r.kind == ':' ? std::to_string(r.integer) : r.text);
    }
  }

  static int64_t Ns(Clock::duration d) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  }

  void Print(int64_t wall_ns) {
    std::sort(latency_.begin(), latency_.end());
    std::sort(first_read_.begin(), first_read_.end());
    const double secs = static_cast<double>(wall_ns) / 1e9;
    std::printf(
        "{\"tool\":\"resp_bench\",\"host\":\"%s\",\"port\":%ld,\"test\":\"%s\","
        "\"clients\":%ld,\"requests\":%ld,\"pipeline\":%ld,\"keyspace\":%ld,"
        "\"value_size\":%ld,\"wait_replicas\":%ld,\"seed\":%ld,\"seconds\":%.6f,"
        "\"rps\":%.1f,\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"max_ms\":%.4f,"
        "\"first_read_p50_ms\":%.4f,\"first_read_p99_ms\":%.4f,"
        "\"errors\":%ld,\"misses\":%ld,\"first_error\":\"%s\"}\n",
        JsonEscape(f_.host).c_str(), f_.port, f_.test.c_str(), f_.clients, f_.requests,
        f_.pipeline, f_.keyspace, f_.value_size, f_.wait_replicas, f_.seed, secs,
        secs > 0 ? static_cast<double>(done_) / secs : 0.0, Percentile(latency_, 50),
        Percentile(latency_, 99), latency_.empty() ? 0.0 : Ms(latency_.back()),
        Percentile(first_read_, 50), Percentile(first_read_, 99), errors_, misses_,
        JsonEscape(first_error_).c_str());
    std::fflush(stdout);
  }

  Flags f_;
  Rng rng_;
  std::string value_;
  std::string wait_cmd_;
  long per_request_ = 1;
  std::vector<Conn> conns_;
  long issued_ = 0;
  long done_ = 0;
  long errors_ = 0;
  long misses_ = 0;
  std::string first_error_;
  std::vector<int64_t> latency_;
  std::vector<int64_t> first_read_;
  Clock::time_point t0_, t_end_;
};

}  // namespace

int main(int argc, char** argv) {
  Flags f = ParseFlags(argc, argv);
  return Bench(f).Run();
}
