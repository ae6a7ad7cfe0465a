#include "spare/gate.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace spare {

Status Gate::send(int fd, std::string_view bytes, uint64_t epoch) {
  if (bytes.empty()) return Status::Ok();
  Queue& q = queues_[fd];
  if (epoch <= durable_ && q.held.empty()) {
    // Already durable and nothing older is held for fd: write now.
    q.ready.append(bytes);
    ++released_outputs_;
    Status st = WriteReady(fd, q);
    if (!st.ok() || q.ready.empty()) queues_.erase(fd);
    return st;
  }
  // Coalesce with the newest held output of the same epoch.
  if (!q.held.empty() && q.held.back().epoch == epoch) {
    q.held.back().bytes.append(bytes);
  } else {
    q.held.push_back(Output{epoch, std::string(bytes)});
    ++held_outputs_;
  }
  held_bytes_ += bytes.size();
  return Status::Ok();
}

Status Gate::release(uint64_t epoch) {
  if (epoch <= durable_) return Status::Ok();
  durable_ = epoch;
  Status first;
  for (auto it = queues_.begin(); it != queues_.end();) {
    Queue& q = it->second;
    bool moved = false;
    while (!q.held.empty() && q.held.front().epoch <= durable_) {
      held_bytes_ -= q.held.front().bytes.size();
      --held_outputs_;
      ++released_outputs_;
      if (q.ready.empty()) {
        q.ready = std::move(q.held.front().bytes);
      } else {
        q.ready += q.held.front().bytes;
      }
      q.held.pop_front();
      moved = true;
    }
    if (moved) {
      Status st = WriteReady(it->first, q);
      if (!st.ok()) {
        if (first.ok()) first = st;
        for (auto& o : q.held) held_bytes_ -= o.bytes.size();
        held_outputs_ -= q.held.size();
        it = queues_.erase(it);
        continue;
      }
    }
    if (q.held.empty() && q.ready.empty()) {
      it = queues_.erase(it);
    } else {
      ++it;
    }
  }
  return first;
}

Status Gate::WriteReady(int fd, Queue& q) {
  size_t off = 0;
  while (off < q.ready.size()) {
    const char* p = q.ready.data() + off;
    const size_t left = q.ready.size() - off;
    ssize_t n =
        q.not_socket ? ::write(fd, p, left) : ::send(fd, p, left, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == ENOTSOCK && !q.not_socket) {
      q.not_socket = true;  // a pipe, file or tty: send() does not apply
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    int err = n < 0 ? errno : EPIPE;
    q.ready.clear();
    ++write_errors_;
    return Status::FromErrno("gate: writing released output to fd " + std::to_string(fd), err);
  }
  q.ready.erase(0, off);
  return Status::Ok();
}

Status Gate::flush(int fd) {
  auto it = queues_.find(fd);
  if (it == queues_.end()) return Status::Ok();
  Status st = WriteReady(fd, it->second);
  if (it->second.ready.empty() && it->second.held.empty()) queues_.erase(it);
  return st;
}

bool Gate::wants_write(int fd) const {
  auto it = queues_.find(fd);
  return it != queues_.end() && !it->second.ready.empty();
}

void Gate::forget(int fd) {
  auto it = queues_.find(fd);
  if (it == queues_.end()) return;
  for (auto& o : it->second.held) held_bytes_ -= o.bytes.size();
  held_outputs_ -= it->second.held.size();
  queues_.erase(it);
}

}  // namespace spare
