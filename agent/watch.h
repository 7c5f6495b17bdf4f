// File: watch.h
// -----------------------------------------------------------------------------
//
// StopWatcher: waits for the next poll tick, a stop request (SIGINT, SIGTERM)
// or the target's exit, whichever comes first; at each tick it also notices
// a target that exec'd another program (kTargetExec).  Signals are received through
// a signalfd (blocked for the process while the watcher lives, restored
// after), the target's exit through a pidfd, so there is no async signal
// handler and no global flag.
//
// Example:
//
//   absl::StatusOr<std::unique_ptr<StopWatcher>> w = StopWatcher::Create(pid);
//   while ((*w)->WaitUntil(next_tick) == StopWatcher::Event::kTick) Poll();

#ifndef MAPSCOPE_AGENT_WATCH_H_
#define MAPSCOPE_AGENT_WATCH_H_

#include <signal.h>
#include <sys/types.h>

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "fd.h"
#include "target.h"

namespace mapscope {

class StopWatcher {
 public:
  enum class Event { kTick, kSignal, kTargetExit, kTargetExec };

  // StopWatcher::Create()
  //
  // Blocks SIGINT and SIGTERM for the calling thread (call it before any
  // other thread starts) and watches `pid`.  NotFound if pid is gone.
  static absl::StatusOr<std::unique_ptr<StopWatcher>> Create(pid_t pid);

  // The same for a resolved target: watches the very process ResolveTarget
  // found (its pidfd, never the PID number again), and reports kTargetExec
  // at the first tick after it exec'd.
  static absl::StatusOr<std::unique_ptr<StopWatcher>> Create(const Target& target);
  ~StopWatcher();

  StopWatcher(const StopWatcher&) = delete;
  StopWatcher& operator=(const StopWatcher&) = delete;

  // StopWatcher::WaitUntil()
  //
  // Returns kTick at `deadline`, or earlier kSignal / kTargetExit (or, at
  // the deadline, kTargetExec).  Once the target has exited or exec'd or a
  // signal arrived, every later call returns that event at once.
  Event WaitUntil(absl::Time deadline);

  // The signal that stopped us (0 if none).
  int signal() const { return signo_; }

  static absl::string_view EventName(Event e);

 private:
  static absl::StatusOr<std::unique_ptr<StopWatcher>> Watch(Fd pidfd);
  StopWatcher(Fd sigfd, Fd pidfd, const sigset_t& old_mask)
      : sigfd_(std::move(sigfd)), pidfd_(std::move(pidfd)), old_mask_(old_mask) {}

  Fd sigfd_;
  Fd pidfd_;
  sigset_t old_mask_;
  Target target_;  // pid and the fds only (Create(const Target&)); pid 0 otherwise
  int signo_ = 0;
  bool exited_ = false;
  bool execed_ = false;
};

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_WATCH_H_
