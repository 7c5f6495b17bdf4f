// File: http_server.h
// -----------------------------------------------------------------------------
//
// MetricsServer: /metrics over HTTP with GNU libmicrohttpd (its own polling
// thread).  The listening socket is ours (bound before the daemon starts), so
// a taken port is a precise "Address already in use" error, and port 0 picks
// a free one (port() tells which).  The served body is whatever Publish()
// last set: a scrape never touches the BPF maps.
//
// Example:
//
//   absl::StatusOr<std::unique_ptr<MetricsServer>> s = MetricsServer::Start(addr);
//   (*s)->Publish(FormatPrometheus(...));   // each poll

#ifndef MAPSCOPE_AGENT_HTTP_SERVER_H_
#define MAPSCOPE_AGENT_HTTP_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "command_options.h"
#include "fd.h"

struct MHD_Daemon;
struct MHD_Connection;

namespace mapscope {

class MetricsServer {
 public:
  // MetricsServer::Start()
  //
  // Binds `addr` and serves.  Errors name the address: "listen
  // 127.0.0.1:9464: Address already in use".
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const ListenAddress& addr);
  ~MetricsServer();

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The body of the next /metrics responses.
  void Publish(std::string body);

  uint16_t port() const { return port_; }
  uint64_t scrapes() const;

  // Handles one request (libmicrohttpd's access handler calls it).
  int Handle(MHD_Connection* connection, const char* url, const char* method);

 private:
  MetricsServer() = default;

  Fd listen_fd_;
  MHD_Daemon* daemon_ = nullptr;
  uint16_t port_ = 0;
  mutable absl::Mutex mu_;
  std::string body_ ABSL_GUARDED_BY(mu_);
  uint64_t scrapes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_HTTP_SERVER_H_
