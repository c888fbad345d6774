// grpc-echo: gRPC unary echo over TCP, the conventional RPC stack that the comparison
// script measures beside Homa as its baseline.
//
//   grpc-echo server --port P [--bind ADDR] [--threads N] [--duration S]
//   grpc-echo local  --mode latency|throughput [--size B] [--duration S] ...
//   grpc-echo client --server HOST:PORT --mode latency|throughput [--size B] ...
//
// "local" starts the server in this process on 127.0.0.1 and runs the client against it;
// "client" runs the same client against a separate server. Each run prints one line:
//   grpc latency size=B p50_us=X p99_us=Y count=N
//   grpc throughput size=B outstanding=K kops=X p50_us=Y p99_us=Z
// Bad options print one line on stderr and exit 2; failed calls exit 1.
//
// The server and the throughput client use the completion-queue API rather than the
// synchronous one, because it is the fastest way gRPC offers and lets this program decide
// how many threads each side has: the baseline should be gRPC at its best, not at its
// most convenient.
#include <grpcpp/grpcpp.h>
#include <malloc.h>
#include <signal.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "echo.grpc.pb.h"

namespace {

namespace pb = homa::grpc_echo;
using Clock = std::chrono::steady_clock;

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;
// gRPC refuses messages over 4 MiB by default; the comparison's largest messages are
// bigger than that, so both sides raise the limit, leaving room for protobuf framing
// around the largest payload.
constexpr int kMaxPayload = 64 << 20;
constexpr int kMaxMessage = kMaxPayload + 1024;
// Calls that take this long mean the peer is gone; failing beats hanging the benchmark.
constexpr auto kCallTimeout = std::chrono::seconds(10);
constexpr auto kConnectTimeout = std::chrono::seconds(5);
// Calls each server completion queue keeps requested, so that a burst of arrivals finds
// a call ready instead of waiting for the server thread to post the next request.
constexpr int kRequestsPerQueue = 32;

const char kUsage[] =
    "usage:\n"
    "  grpc-echo server --port P [--bind ADDR] [--threads N] [--duration S]\n"
    "                   [--window B] [--malloc keep|default]\n"
    "  grpc-echo local  --mode latency|throughput [--size B] [--response-size B]\n"
    "                   [--duration S] [--warmup S] [--outstanding K] [--threads N]\n"
    "                   [--client-threads T] [--window B] [--malloc keep|default]\n"
    "  grpc-echo client --server HOST:PORT --mode latency|throughput [same as local,\n"
    "                   less --threads]\n"
    "options:\n"
    "  --port P            server port (0 picks a free one and prints it)\n"
    "  --bind ADDR         server address to listen on (default 0.0.0.0)\n"
    "  --threads N         server threads, one completion queue each (default 1)\n"
    "  --duration S        seconds to measure (default 5); for server, seconds to\n"
    "                      serve before exiting (default: until SIGINT/SIGTERM)\n"
    "  --mode M            latency: one call at a time; throughput: K calls outstanding\n"
    "  --size B            request payload bytes (default 64)\n"
    "  --response-size B   response payload bytes (default: same as --size)\n"
    "  --outstanding K     calls kept in flight in throughput mode (default 64)\n"
    "  --client-threads T  client threads sharing the K calls, one connection each\n"
    "                      (default 1)\n"
    "  --warmup S          seconds of calls before measuring starts (default 0.5)\n"
    "  --window B          HTTP/2 stream window in bytes, on whichever sides this\n"
    "                      process runs (default: gRPC's own)\n"
    "  --malloc keep|default  keep: glibc keeps freed memory instead of returning it\n"
    "                      to the kernel (default); default: glibc's own behaviour\n";

[[noreturn]] void UsageError(const std::string& message) {
  std::fprintf(stderr, "grpc-echo: %s (see grpc-echo --help)\n", message.c_str());
  std::exit(kExitUsage);
}

// Failures can happen while gRPC threads are running; _Exit skips the static destructors
// those threads could still be using.
[[noreturn]] void Fail(const std::string& message) {
  std::fprintf(stderr, "grpc-echo: %s\n", message.c_str());
  std::fflush(stdout);
  std::_Exit(kExitFailure);
}

struct Options {
  std::string command;
  std::string mode;
  std::string server;
  std::string bind = "0.0.0.0";
  int port = -1;
  int server_threads = 1;
  int client_threads = 1;
  int size = 64;
  int response_size = -1;  // -1: same as size
  int outstanding = 64;
  int window = 0;  // HTTP/2 stream window (lookahead) in bytes; 0 keeps gRPC's default
  bool keep_memory = true;
  std::optional<double> duration;
  double warmup = 0.5;
};

long ParseInt(std::string_view name, std::string_view text, long low, long high) {
  long value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value < low || value > high) {
    UsageError(std::string(name) + " wants an integer in [" + std::to_string(low) + ", " +
               std::to_string(high) + "], got '" + std::string(text) + "'");
  }
  return value;
}

double ParseSeconds(std::string_view name, std::string_view text, double low, double high) {
  double value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || !(value >= low) ||
      !(value <= high)) {
    char range[64];
    std::snprintf(range, sizeof range, "[%g, %g]", low, high);
    UsageError(std::string(name) + " wants seconds in " + range + ", got '" + std::string(text) +
               "'");
  }
  return value;
}

Options ParseOptions(int argc, char** argv) {
  Options options;
  if (argc < 2) UsageError("missing command: server, local or client");
  options.command = argv[1];
  if (options.command == "--help" || options.command == "-h") {
    std::fputs(kUsage, stdout);
    std::exit(0);
  }
  const bool server = options.command == "server";
  const bool local = options.command == "local";
  const bool client = options.command == "client";
  if (!server && !local && !client) {
    UsageError("unknown command '" + options.command + "': use server, local or client");
  }

  for (int i = 2; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (arg.substr(0, 2) != "--") UsageError("unexpected argument '" + std::string(arg) + "'");
    std::string_view name = arg;
    std::string_view value;
    if (auto eq = arg.find('='); eq != std::string_view::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      UsageError(std::string(name) + " needs a value");
    }

    // Which options each command accepts: a server option given to a client (or the
    // reverse) is a mistake in the calling script, so it is refused rather than ignored.
    const bool for_server = server || local;
    const bool for_client = local || client;
    if (name == "--port" && server) {
      options.port = static_cast<int>(ParseInt(name, value, 0, 65535));
    } else if (name == "--bind" && server) {
      options.bind = value;
    } else if (name == "--threads" && for_server) {
      options.server_threads = static_cast<int>(ParseInt(name, value, 1, 256));
    } else if (name == "--duration") {
      options.duration = ParseSeconds(name, value, server ? 0 : 0.001, 86400);
    } else if (name == "--window") {
      options.window = static_cast<int>(ParseInt(name, value, 0, 1 << 30));
    } else if (name == "--malloc") {
      if (value != "keep" && value != "default") {
        UsageError("--malloc wants keep or default, got '" + std::string(value) + "'");
      }
      options.keep_memory = value == "keep";
    } else if (name == "--server" && client) {
      options.server = value;
    } else if (name == "--mode" && for_client) {
      if (value != "latency" && value != "throughput") {
        UsageError("--mode wants latency or throughput, got '" + std::string(value) + "'");
      }
      options.mode = value;
    } else if (name == "--size" && for_client) {
      options.size = static_cast<int>(ParseInt(name, value, 0, kMaxPayload));
    } else if (name == "--response-size" && for_client) {
      options.response_size = static_cast<int>(ParseInt(name, value, 0, kMaxPayload));
    } else if (name == "--outstanding" && for_client) {
      options.outstanding = static_cast<int>(ParseInt(name, value, 1, 100000));
    } else if (name == "--client-threads" && for_client) {
      options.client_threads = static_cast<int>(ParseInt(name, value, 1, 256));
    } else if (name == "--warmup" && for_client) {
      options.warmup = ParseSeconds(name, value, 0, 3600);
    } else {
      UsageError("unknown option " + std::string(name) + " for " + options.command);
    }
  }

  if (server && options.port < 0) UsageError("server needs --port");
  if (client && options.server.empty()) UsageError("client needs --server HOST:PORT");
  if (!server && options.mode.empty()) UsageError(options.command + " needs --mode");
  if (options.response_size < 0) options.response_size = options.size;
  if (options.mode == "throughput" && options.client_threads > options.outstanding) {
    UsageError("--client-threads cannot exceed --outstanding");
  }
  return options;
}

std::chrono::system_clock::time_point DeadlineIn(std::chrono::nanoseconds timeout) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(timeout);
}

// ---------------------------------------------------------------------------------------
// Server

// One completion queue and the thread that drains it. `closing` is checked under `mutex`
// before anything new is posted to the queue, because posting to a queue that is being
// shut down is not allowed; the mutex is only ever contended during shutdown.
struct ServerQueue {
  std::unique_ptr<grpc::ServerCompletionQueue> cq;
  std::mutex mutex;
  bool closing = false;
};

// One unary call on the server, from being requested to its answer being sent. The
// completion queue hands it back (as its tag) once per step; it deletes itself after the
// last step.
class ServerCall {
 public:
  static void Request(pb::Echo::AsyncService* service, ServerQueue* queue) {
    auto* call = new ServerCall(service, queue);
    service->RequestCall(&call->context_, &call->request_, &call->responder_,
                         queue->cq.get(), queue->cq.get(), call);
  }

  // Called with the queue's mutex held.
  void OnEvent(bool ok) {
    if (queue_->closing || !ok || answered_) {
      delete this;
      return;
    }
    // Replace this call among the requested ones before answering it.
    Request(service_, queue_);
    answered_ = true;
    const int length = request_.response_length();
    if (length < 0 || length > kMaxPayload) {
      responder_.FinishWithError(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "response_length out of range"), this);
      return;
    }
    reply_.mutable_payload()->assign(static_cast<size_t>(length), 'r');
    responder_.Finish(reply_, grpc::Status::OK, this);
  }

 private:
  ServerCall(pb::Echo::AsyncService* service, ServerQueue* queue)
      : service_(service), queue_(queue), responder_(&context_) {}

  pb::Echo::AsyncService* service_;
  ServerQueue* queue_;
  grpc::ServerContext context_;
  pb::Msg request_;
  pb::Msg reply_;
  grpc::ServerAsyncResponseWriter<pb::Msg> responder_;
  bool answered_ = false;
};

class EchoServer {
 public:
  // Exits the program if it cannot listen on `address` ("host:port"; port 0 picks one).
  EchoServer(const std::string& address, int threads, int window) {
    grpc::ServerBuilder builder;
    if (window > 0) builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, window);
    builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    builder.SetMaxReceiveMessageSize(kMaxMessage);
    builder.SetMaxSendMessageSize(kMaxMessage);
    for (int i = 0; i < threads; ++i) {
      auto queue = std::make_unique<ServerQueue>();
      queue->cq = builder.AddCompletionQueue();
      queues_.push_back(std::move(queue));
    }
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0) Fail("cannot listen on " + address);
    for (auto& queue : queues_) {
      for (int i = 0; i < kRequestsPerQueue; ++i) ServerCall::Request(&service_, queue.get());
      threads_.emplace_back([q = queue.get()] { Serve(q); });
    }
  }

  EchoServer(const EchoServer&) = delete;
  EchoServer& operator=(const EchoServer&) = delete;
  ~EchoServer() { Shutdown(); }

  int port() const { return port_; }

  void Shutdown() {
    if (!server_) return;
    // Calls still running get a moment to finish, then are cancelled.
    server_->Shutdown(DeadlineIn(std::chrono::milliseconds(500)));
    for (auto& queue : queues_) {
      std::lock_guard lock(queue->mutex);
      queue->closing = true;
      queue->cq->Shutdown();
    }
    for (auto& thread : threads_) thread.join();
    threads_.clear();
    server_.reset();
  }

 private:
  static void Serve(ServerQueue* queue) {
    void* tag = nullptr;
    bool ok = false;
    while (queue->cq->Next(&tag, &ok)) {
      std::lock_guard lock(queue->mutex);
      static_cast<ServerCall*>(tag)->OnEvent(ok);
    }
  }

  pb::Echo::AsyncService service_;
  std::vector<std::unique_ptr<ServerQueue>> queues_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::thread> threads_;
  int port_ = 0;
};

int RunServer(const Options& options) {
  // Block the stop signals before gRPC starts its threads, so that they inherit the mask
  // and the signals reach only the sigwait below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  const std::string address = options.bind + ":" + std::to_string(options.port);
  EchoServer server(address, options.server_threads, options.window);
  std::printf("grpc-echo: serving on %s:%d threads=%d\n", options.bind.c_str(), server.port(),
              options.server_threads);
  std::fflush(stdout);

  const double serve_for = options.duration.value_or(0);
  if (serve_for > 0) {
    timespec limit{};
    limit.tv_sec = static_cast<time_t>(serve_for);
    limit.tv_nsec = static_cast<long>((serve_for - static_cast<double>(limit.tv_sec)) * 1e9);
    sigtimedwait(&stop_signals, nullptr, &limit);
  } else {
    int signal_number = 0;
    sigwait(&stop_signals, &signal_number);
  }
  server.Shutdown();
  return 0;
}

// ---------------------------------------------------------------------------------------
// Client

// When results count: calls completing in [measure_from, end) are measured; the ones
// before warm up connections, allocators and caches.
struct Window {
  Clock::time_point measure_from;
  Clock::time_point end;
};

struct ClientResult {
  std::vector<int64_t> latencies_ns;
  std::string error;  // first failure; empty when every call succeeded
};

std::shared_ptr<grpc::Channel> Connect(const std::string& target, int window) {
  grpc::ChannelArguments args;
  if (window > 0) args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, window);
  args.SetMaxReceiveMessageSize(kMaxMessage);
  args.SetMaxSendMessageSize(kMaxMessage);
  // Each client thread gets its own TCP connection instead of all channels sharing one,
  // so that threads do not contend on a single connection.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  if (!channel->WaitForConnected(DeadlineIn(kConnectTimeout))) {
    Fail("cannot connect to " + target);
  }
  return channel;
}

pb::Msg MakeRequest(const Options& options) {
  pb::Msg request;
  request.set_payload(std::string(static_cast<size_t>(options.size), 'q'));
  request.set_response_length(options.response_size);
  return request;
}

std::string CheckReply(const grpc::Status& status, const pb::Msg& reply, int expected) {
  if (!status.ok()) {
    return "call failed: " + std::to_string(status.error_code()) + " " + status.error_message();
  }
  if (reply.payload().size() != static_cast<size_t>(expected)) {
    return "reply has " + std::to_string(reply.payload().size()) + " bytes, expected " +
           std::to_string(expected);
  }
  return {};
}

// Latency mode: one call at a time with the blocking API, which is how a latency-bound
// caller would use gRPC.
void RunSequential(pb::Echo::Stub& stub, const pb::Msg& request, int expected,
                   const Window& window, ClientResult& result) {
  for (;;) {
    const Clock::time_point start = Clock::now();
    if (start >= window.end) return;
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(kCallTimeout));
    pb::Msg reply;
    const grpc::Status status = stub.Call(&context, request, &reply);
    const Clock::time_point done = Clock::now();
    if (std::string error = CheckReply(status, reply, expected); !error.empty()) {
      result.error = std::move(error);
      return;
    }
    if (done >= window.measure_from && done < window.end) {
      result.latencies_ns.push_back(
          std::chrono::duration_cast<std::chrono::nanoseconds>(done - start).count());
    }
  }
}

struct PendingCall {
  grpc::ClientContext context;
  pb::Msg reply;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<pb::Msg>> reader;
  Clock::time_point start;
};

// Throughput mode: `outstanding` calls in flight on one completion queue; each completion
// starts the next call until the window ends, then the rest drain unmeasured.
void RunPipelined(pb::Echo::Stub& stub, const pb::Msg& request, int expected, int outstanding,
                  const Window& window, ClientResult& result) {
  grpc::CompletionQueue cq;
  auto start_call = [&] {
    auto* call = new PendingCall;
    call->context.set_deadline(DeadlineIn(kCallTimeout));
    call->start = Clock::now();
    call->reader = stub.AsyncCall(&call->context, request, &cq);
    call->reader->Finish(&call->reply, &call->status, call);
  };
  for (int i = 0; i < outstanding; ++i) start_call();

  int in_flight = outstanding;
  void* tag = nullptr;
  bool ok = false;
  while (in_flight > 0 && cq.Next(&tag, &ok)) {
    std::unique_ptr<PendingCall> call(static_cast<PendingCall*>(tag));
    --in_flight;
    const Clock::time_point done = Clock::now();
    if (result.error.empty()) {
      result.error = CheckReply(call->status, call->reply, expected);
    }
    if (done >= window.measure_from && done < window.end) {
      result.latencies_ns.push_back(
          std::chrono::duration_cast<std::chrono::nanoseconds>(done - call->start).count());
    }
    // After a failure no new calls start, so the run ends as soon as the others drain.
    if (done < window.end && result.error.empty()) {
      start_call();
      ++in_flight;
    }
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

double PercentileUs(std::vector<int64_t>& values, double fraction) {
  size_t rank = static_cast<size_t>(std::ceil(fraction * static_cast<double>(values.size())));
  rank = std::clamp<size_t>(rank, 1, values.size()) - 1;
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(rank),
                   values.end());
  return static_cast<double>(values[rank]) / 1000.0;
}

int RunClient(const Options& options, const std::string& target) {
  const pb::Msg request = MakeRequest(options);
  const bool latency = options.mode == "latency";
  const int threads = latency ? 1 : options.client_threads;

  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<pb::Echo::Stub>> stubs;
  for (int i = 0; i < threads; ++i) {
    channels.push_back(Connect(target, options.window));
    stubs.push_back(pb::Echo::NewStub(channels.back()));
  }

  const double duration = options.duration.value_or(5.0);
  Window window;
  window.measure_from =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(options.warmup));
  window.end = window.measure_from + std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(duration));

  std::vector<ClientResult> results(static_cast<size_t>(threads));
  std::vector<std::thread> workers;
  for (int i = 0; i < threads; ++i) {
    // Spread the outstanding calls as evenly as the thread count allows.
    const int share = options.outstanding / threads + (i < options.outstanding % threads ? 1 : 0);
    workers.emplace_back([&, i, share] {
      if (latency) {
        RunSequential(*stubs[i], request, options.response_size, window, results[i]);
      } else {
        RunPipelined(*stubs[i], request, options.response_size, share, window, results[i]);
      }
    });
  }
  for (auto& worker : workers) worker.join();

  std::vector<int64_t> latencies;
  for (auto& result : results) {
    if (!result.error.empty()) Fail(result.error);
    latencies.insert(latencies.end(), result.latencies_ns.begin(), result.latencies_ns.end());
  }
  if (latencies.empty()) Fail("no call completed inside the measurement window");

  const size_t count = latencies.size();
  const double p50 = PercentileUs(latencies, 0.50);
  const double p99 = PercentileUs(latencies, 0.99);
  if (latency) {
    std::printf("grpc latency size=%d p50_us=%.1f p99_us=%.1f count=%zu\n", options.size, p50,
                p99, count);
  } else {
    const double kops = static_cast<double>(count) / duration / 1000.0;
    std::printf("grpc throughput size=%d outstanding=%d kops=%.1f p50_us=%.1f p99_us=%.1f\n",
                options.size, options.outstanding, kops, p50, p99);
  }
  std::fflush(stdout);
  return 0;
}

// glibc hands large freed blocks back to the kernel (munmap, heap trimming), so every
// message above ~128 KiB pays page faults for fresh buffers: on a virtual machine that
// made 1 MB echoes ~40x slower than the copies themselves. gRPC allocates per message and
// Homa's runtime reuses its buffers, so without this the comparison would measure the
// allocator's page faults rather than the transport. Must run before any thread starts.
void KeepFreedMemory() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);   // glibc's maximum
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  mallopt(M_TOP_PAD, 64 << 20);
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = ParseOptions(argc, argv);
  if (options.keep_memory) KeepFreedMemory();
  if (options.command == "server") return RunServer(options);
  if (options.command == "client") return RunClient(options, options.server);

  // Loopback only: the in-process server is never reachable from elsewhere.
  EchoServer server("127.0.0.1:0", options.server_threads, options.window);
  const int status = RunClient(options, "127.0.0.1:" + std::to_string(server.port()));
  server.Shutdown();
  return status;
}
