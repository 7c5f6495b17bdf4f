#include "watch.h"

#include <poll.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fcntl.h>

#include <cerrno>

#include "absl/strings/str_cat.h"

namespace mapscope {

absl::StatusOr<std::unique_ptr<StopWatcher>> StopWatcher::Create(pid_t pid) {
  Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd.valid()) {
    if (errno == ESRCH) return absl::NotFoundError(absl::StrCat("pid ", pid, ": no such process"));
    return absl::ErrnoToStatus(errno, absl::StrCat("pidfd_open(", pid, ")"));
  }
  return Watch(std::move(pidfd));
}

absl::StatusOr<std::unique_ptr<StopWatcher>> StopWatcher::Create(const Target& target) {
  if (!target.pidfd || !target.pidfd->valid()) return Create(target.pid);
  Fd pidfd(::fcntl(target.pidfd->get(), F_DUPFD_CLOEXEC, 0));
  if (!pidfd.valid()) return absl::ErrnoToStatus(errno, "dup pidfd");
  absl::StatusOr<std::unique_ptr<StopWatcher>> w = Watch(std::move(pidfd));
  if (!w.ok()) return w.status();
  Target& t = (*w)->target_;
  t.pid = target.pid;
  t.comm = target.comm;
  t.pidfd = target.pidfd;
  t.start_time = target.start_time;
  t.mem = target.mem;
  t.mem_check_addr = target.mem_check_addr;
  return w;
}

absl::StatusOr<std::unique_ptr<StopWatcher>> StopWatcher::Watch(Fd pidfd) {
  sigset_t mask, old;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  if (int err = pthread_sigmask(SIG_BLOCK, &mask, &old)) {
    return absl::ErrnoToStatus(err, "block SIGINT/SIGTERM");
  }
  Fd sigfd(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!sigfd.valid()) {
    const int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return absl::ErrnoToStatus(err, "signalfd");
  }
  return std::unique_ptr<StopWatcher>(new StopWatcher(std::move(sigfd), std::move(pidfd), old));
}

StopWatcher::~StopWatcher() {
  // A signal that arrived after we stopped listening stays pending and is
  // delivered when the mask is restored: consume it first, we handled the
  // stop already.
  signalfd_siginfo si;
  while (::read(sigfd_.get(), &si, sizeof(si)) == sizeof(si)) {
  }
  pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
}

StopWatcher::Event StopWatcher::WaitUntil(absl::Time deadline) {
  for (;;) {
    if (signo_) return Event::kSignal;
    if (exited_) return Event::kTargetExit;
    if (execed_) return Event::kTargetExec;
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      if (target_.pid != 0 && TargetExeced(target_)) {
        execed_ = true;
        continue;
      }
      return Event::kTick;
    }
    pollfd fds[2] = {{sigfd_.get(), POLLIN, 0}, {pidfd_.get(), POLLIN, 0}};
    const int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)));
    const int n = ::poll(fds, 2, static_cast<int>(std::min<int64_t>(ms, 1 << 30)));
    if (n < 0 && errno != EINTR) return Event::kTick;  // poll cannot fail here; be safe
    if (n <= 0) continue;
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo si;
      if (::read(sigfd_.get(), &si, sizeof(si)) == sizeof(si))
        signo_ = static_cast<int>(si.ssi_signo);
    }
    if (fds[1].revents & (POLLIN | POLLHUP)) exited_ = true;
  }
}

absl::string_view StopWatcher::EventName(Event e) {
  switch (e) {
    case Event::kTick:
      return "tick";
    case Event::kSignal:
      return "signal";
    case Event::kTargetExit:
      return "target exit";
    case Event::kTargetExec:
      return "target exec";
  }
  return "?";
}

}  // namespace mapscope
