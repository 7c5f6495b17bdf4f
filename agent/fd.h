// File: fd.h
// -----------------------------------------------------------------------------
//
// Fd: a move-only owner of a file descriptor (closed on destruction).

#ifndef MAPSCOPE_AGENT_FD_H_
#define MAPSCOPE_AGENT_FD_H_

#include <unistd.h>

#include <utility>

namespace mapscope {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { Reset(); }

  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership: returns the fd, which is no longer closed here.
  int Release() { return std::exchange(fd_, -1); }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_FD_H_
