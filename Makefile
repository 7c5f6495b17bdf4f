# mapscope: the one build entry.  Everything lands under build/.
#
#   make            library checks, mapload, mapscope (installs packages if missing)
#   make test       the default test suite (kernel tests included; run as root)
#   make test-long  stress, sanitizer soak and fuzzing
#   make bench      map benchmarks          make bench-quick  the reduced matrix
#   make bench-tracing   what tracing costs the traced process (QUICK=1: shorter)
#   make demo       a leaking service, and mapscope finding the leak
#   make deps       install the Debian packages this needs (idempotent)
#   make install PREFIX=/usr/local   headers + syncmap.pc
#   V=1             print full commands

.DEFAULT_GOAL := all

BUILD   := build
PREFIX  ?= /usr/local
ARCH    := $(shell uname -m | sed 's/x86_64/x86/;s/aarch64/arm64/')

CXX      := g++
CLANG    := clang
BPFTOOL  ?= $(firstword $(wildcard /usr/sbin/bpftool) bpftool)
DTRACE   := dtrace

# Packages: what `make deps` installs.  Kept in one list so a fresh machine
# and CI install the same set.
DEB_PKGS := build-essential pkg-config clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev \
            systemtap-sdt-dev libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev \
            liburcu-dev libcapstone-dev libbpfcc-dev binutils nlohmann-json3-dev \
            libtbb-dev libcuckoo-dev libdw-dev libmicrohttpd-dev prometheus \
            bpftrace

ifeq ($(V),1)
Q :=
msg :=
else
Q := @
msg = @printf '  %-8s %s\n' "$(1)" "$(2)";
endif

# Recursive (=) so pkg-config runs when a recipe needs it, after `deps`.
PKGS_LIB   := absl_flat_hash_map absl_hash absl_synchronization liburcu-bp
LIB_CFLAGS  = $(shell pkg-config --cflags $(PKGS_LIB))
LIB_LIBS    = $(shell pkg-config --libs $(PKGS_LIB)) -lpthread
GTEST_LIBS  = $(shell pkg-config --libs gtest_main gmock) -lpthread

WARN      := -Wall -Wextra -Werror
CXXSTD    := -std=c++20
INCLUDES  := -Iinclude -I$(BUILD)/include
# Frame pointers: `mapscope record` walks user stacks by frame pointer (the
# kernel's bpf_get_stackid); without them mapload's stacks were truncated
# garbage (166k stack-map collisions in 5 s).  Cost, measured with mapload
# (3 x 2 s each): healthy (read hits) 96.5 vs 96.9 M ops/s, storm 11.8 vs
# 9.9 M ops/s: within noise.
CXXFLAGS  ?= -O2 -g -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer
ALL_CXXFLAGS = $(CXXSTD) $(WARN) $(CXXFLAGS) $(INCLUDES) $(LIB_CFLAGS) -MMD -MP

SAN_ASAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
SAN_TSAN := -fsanitize=thread

# ---------------------------------------------------------------------------
# Generated headers: the probe provider from probes/syncmap.d, plus the
# probe headers copied next to it so in-tree and installed layouts match.

GEN_INC   := $(BUILD)/include/syncmap
PROBE_HDRS := $(GEN_INC)/syncmap_provider.h $(GEN_INC)/syncmap_probes.h $(GEN_INC)/syncmap_abi.h

# dtrace -h declares the semaphores `extern` for a `dtrace -G` object; a
# header-only library defines them itself: C++17 inline (one per binary)
# and hidden (an executable and each .so keep their own).  See
# probes/syncmap_probes.h.
$(GEN_INC)/syncmap_provider.h: probes/syncmap.d | $(GEN_INC)
	$(call msg,DTRACE,$@)
	$(Q)$(DTRACE) -h -s $< -o $@.tmp
	$(Q)sed -i 's/^__extension__ extern unsigned short \(.*\);$$/__extension__ inline unsigned short \1 __attribute__ ((visibility ("hidden")));/' $@.tmp
	$(Q)grep -q 'inline unsigned short syncmap_miss_semaphore' $@.tmp || { echo "dtrace -h output changed; fix the sed in the Makefile" >&2; exit 1; }
	$(Q)mv $@.tmp $@

$(GEN_INC)/%.h: probes/%.h | $(GEN_INC)
	$(call msg,COPY,$@)
	$(Q)cp $< $@

$(BUILD) $(GEN_INC) $(BUILD)/tests $(BUILD)/obj $(BUILD)/bench $(BUILD)/bpf:
	$(Q)mkdir -p $@

# ---------------------------------------------------------------------------
# BPF: vmlinux.h from the running kernel's BTF, each bpf/<tool>.bpf.c into an
# object and a skeleton (build/bpf/<tool>.skel.h) the agent includes.

BPF_SRCS  := $(wildcard bpf/*.bpf.c)
BPF_OBJS  := $(patsubst bpf/%.bpf.c,$(BUILD)/bpf/%.bpf.o,$(BPF_SRCS))
BPF_SKELS := $(patsubst bpf/%.bpf.c,$(BUILD)/bpf/%.skel.h,$(BPF_SRCS))

# clang -target bpf does not search the multiarch dir (asm/types.h); add
# the system include dirs clang itself uses, after the BPF ones.
CLANG_BPF_SYS_INCLUDES = $(shell $(CLANG) -v -E - </dev/null 2>&1 \
	| sed -n '/<...> search starts here:/,/End of search list./{ s| \(/.*\)|-idirafter \1|p }')

$(BUILD)/bpf/vmlinux.h: | $(BUILD)/bpf
	$(call msg,GEN,$@)
	$(Q)$(BPFTOOL) btf dump file /sys/kernel/btf/vmlinux format c > $@

$(BUILD)/bpf/%.bpf.o: bpf/%.bpf.c $(BUILD)/bpf/vmlinux.h $(GEN_INC)/syncmap_abi.h | $(BUILD)/bpf
	$(call msg,BPF,$@)
	$(Q)$(CLANG) -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_$(ARCH) -MMD -MP -MT $@ \
		-I$(BUILD)/bpf -Ibpf -I$(BUILD)/include $(CLANG_BPF_SYS_INCLUDES) -c $< -o $@.tmp
	$(Q)$(BPFTOOL) gen object $@ $@.tmp && rm -f $@.tmp

$(BUILD)/bpf/%.skel.h: $(BUILD)/bpf/%.bpf.o
	$(call msg,GEN-SKEL,$@)
	$(Q)$(BPFTOOL) gen skeleton $< name $(subst -,_,$*)_bpf > $@

# ---------------------------------------------------------------------------
# The agent: agent/*.cc into build/mapscope (agent/main.cc holds main());
# agent/preload/*.cc into build/libmapscope_preload.so.

AGENT_SRCS    := $(filter-out agent/main.cc,$(wildcard agent/*.cc))
AGENT_OBJS    := $(patsubst agent/%.cc,$(BUILD)/obj/agent/%.o,$(AGENT_SRCS))
PKGS_AGENT    := libbpf libelf zlib libdw libmicrohttpd absl_status absl_statusor absl_str_format_internal \
                 absl_strings absl_flags absl_flags_parse absl_time
AGENT_CFLAGS   = $(shell pkg-config --cflags $(PKGS_AGENT)) -I$(BUILD)/bpf -iquote bpf -Iagent
# capstone (probe placement, agent/malloc_source.cc): libs only; its --cflags
# (-I/usr/include/capstone) would put headers named x86.h, platform.h ... on
# every agent include path, and <capstone/capstone.h> needs none.
# BCC (kernel symbols, agent/symbolize.cc): its static archive, from which
# the linker takes only the symbol cache; libbcc.so links LLVM and clang
# (+26 ms start-up, +65 MB RSS for every mapscope command, measured).
AGENT_LIBS     = $(shell pkg-config --libs $(PKGS_AGENT) capstone) -Wl,-Bstatic -lbcc -Wl,-Bdynamic
MAPSCOPE      := $(BUILD)/mapscope

$(BUILD)/obj/agent/%.o: agent/%.cc $(PROBE_HDRS) $(BPF_SKELS)
	$(call msg,CXX,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CXX) $(ALL_CXXFLAGS) $(AGENT_CFLAGS) -c $< -o $@

# The flame graph page (agent/flamegraph.cc): d3-flame-graph's standalone
# template from npm, compiled in as a string literal; nothing is fetched when
# mapscope runs or when the page is opened.
D3FG_VERSION := 4.1.3
D3FG_TPL     := $(BUILD)/npm/node_modules/d3-flame-graph/dist/templates/d3-flamegraph-base.html
FLAMEGRAPH_INC := $(BUILD)/include/mapscope/flamegraph_template.inc
$(D3FG_TPL): | $(BUILD)
	$(call msg,NPM,d3-flame-graph@$(D3FG_VERSION))
	$(Q)command -v npm >/dev/null || { echo "make: npm not found (needed for the flame graph page: Node.js + npm)" >&2; exit 1; }
	$(Q)npm install --prefix $(BUILD)/npm --no-audit --no-fund --loglevel=error d3-flame-graph@$(D3FG_VERSION) >/dev/null
	$(Q)touch $@
$(FLAMEGRAPH_INC): $(D3FG_TPL)
	$(call msg,GEN,$@)
	$(Q)mkdir -p $(@D)
	$(Q)! grep -q ')mapscope_tpl"' $< || { echo "template contains the raw-string delimiter" >&2; exit 1; }
	$(Q){ printf 'R"mapscope_tpl('; cat $<; printf ')mapscope_tpl"\n'; } > $@.tmp && mv $@.tmp $@
$(BUILD)/obj/agent/flamegraph.o: $(FLAMEGRAPH_INC)

$(MAPSCOPE): $(BUILD)/obj/agent/main.o $(AGENT_OBJS)
	$(call msg,LINK,$@)
	$(Q)$(CXX) $^ -o $@ $(AGENT_LIBS) $(LIB_LIBS)

PRELOAD_SRCS := $(wildcard agent/preload/*.cc)
PRELOAD_SO   := $(if $(PRELOAD_SRCS),$(BUILD)/libmapscope_preload.so)
$(BUILD)/libmapscope_preload.so: $(PRELOAD_SRCS) $(PROBE_HDRS) | $(BUILD)
	$(call msg,CXX,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) -fPIC -shared -fvisibility=hidden -fno-exceptions -fno-rtti \
		$(PRELOAD_SRCS) -o $@ -Wl,--as-needed -ldl -lpthread

# ---------------------------------------------------------------------------
# Tools: tools/<name>/*.cc into build/<name>.

MAPLOAD := $(BUILD)/mapload
TOOL_LIBS = $(LIB_LIBS) $(shell pkg-config --libs absl_flags absl_flags_parse absl_str_format_internal absl_strings)

$(MAPLOAD): $(wildcard tools/mapload/*.cc) $(PROBE_HDRS) | $(BUILD)
	$(call msg,CXX,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) -pthread $(filter %.cc,$^) -o $@ $(TOOL_LIBS) -ldl

# ---------------------------------------------------------------------------
# Tests: each tests/<name>_test.cc is one GoogleTest binary build/tests/<name>_test
# (linked with the agent's objects, so agent code is testable without main);
# tests/fixtures/<name>.cc are test programs (build/tests/<name>) and
# tests/fixtures/lib<name>.cc test shared libraries (build/tests/lib<name>.so).
# The library's own test also builds under ASAN+UBSAN and under TSAN.

TEST_SRCS    := $(wildcard tests/*_test.cc)
TEST_BINS    := $(patsubst tests/%.cc,$(BUILD)/tests/%,$(TEST_SRCS))
FIXTURE_SRCS := $(wildcard tests/fixtures/*.cc)
FIXTURE_LIBS := $(patsubst tests/fixtures/%.cc,$(BUILD)/tests/%.so,$(filter tests/fixtures/lib%,$(FIXTURE_SRCS)))
FIXTURE_BINS := $(patsubst tests/fixtures/%.cc,$(BUILD)/tests/%,$(filter-out tests/fixtures/lib%,$(FIXTURE_SRCS)))
SAN_BINS     := $(BUILD)/tests/sync_map_test.asan $(BUILD)/tests/sync_map_test.tsan
# The agent's own tests under ASAN+UBSAN (see "Sanitizer builds" below).
AGENT_ASAN_TESTS := agent_cli_test health_test fault_test
SAN_BINS     += $(patsubst %,$(BUILD)/tests/%.asan,$(AGENT_ASAN_TESTS)) \
                $(if $(PRELOAD_SRCS),$(BUILD)/libmapscope_preload.tsan.so $(BUILD)/tests/preload_storm.tsan)
TEST_DEPS    := $(TEST_BINS) $(SAN_BINS) $(FIXTURE_LIBS) $(FIXTURE_BINS) $(MAPLOAD) $(MAPSCOPE) $(PRELOAD_SO)

$(BUILD)/tests/%_test: tests/%_test.cc $(AGENT_OBJS) $(PROBE_HDRS) $(BPF_SKELS) | $(BUILD)/tests
	$(call msg,CXX,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) $(AGENT_CFLAGS) -pthread $< $(AGENT_OBJS) -o $@ \
		$(AGENT_LIBS) $(LIB_LIBS) $(GTEST_LIBS) -ldl

$(BUILD)/tests/sync_map_test.asan: tests/sync_map_test.cc $(PROBE_HDRS) | $(BUILD)/tests
	$(call msg,CXX,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) -MF $@.d -O1 $(SAN_ASAN) -pthread $< -o $@ $(LIB_LIBS) $(GTEST_LIBS)
$(BUILD)/tests/sync_map_test.tsan: tests/sync_map_test.cc $(PROBE_HDRS) | $(BUILD)/tests
	$(call msg,CXX,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) -MF $@.d -O1 $(SAN_TSAN) -pthread $< -o $@ $(LIB_LIBS) $(GTEST_LIBS)

# Sanitizer builds of the agent: its objects again under ASAN+UBSAN
# (build/obj-asan), build/mapscope.asan, and build/tests/NAME.asan for
# AGENT_ASAN_TESTS, which drive build/mapscope.asan (tests/agent_test_util.h:
# a *.asan test runs the *.asan agent); tests/run_tests.sh runs them with
# leak detection.  And the preload shim under TSAN: the shim built with
# -fsanitize=thread -DMAPSCOPE_PRELOAD_TSAN (agent/preload/malloc_preload.cc)
# and a TSAN storm program to preload it into (tests/fault_sanitizer_test.cc).
AGENT_ASAN_OBJS := $(patsubst agent/%.cc,$(BUILD)/obj-asan/agent/%.o,$(AGENT_SRCS))
$(BUILD)/obj-asan/agent/%.o: agent/%.cc $(PROBE_HDRS) $(BPF_SKELS)
	$(call msg,CXX-ASAN,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CXX) $(ALL_CXXFLAGS) $(AGENT_CFLAGS) -O1 $(SAN_ASAN) -c $< -o $@
$(BUILD)/obj-asan/agent/flamegraph.o: $(FLAMEGRAPH_INC)
$(BUILD)/mapscope.asan: $(BUILD)/obj-asan/agent/main.o $(AGENT_ASAN_OBJS)
	$(call msg,LINK,$@)
	$(Q)$(CXX) $(SAN_ASAN) $^ -o $@ $(AGENT_LIBS) $(LIB_LIBS)
$(BUILD)/tests/%_test.asan: tests/%_test.cc $(AGENT_ASAN_OBJS) $(BUILD)/mapscope.asan $(PROBE_HDRS) $(BPF_SKELS) | $(BUILD)/tests
	$(call msg,CXX-ASAN,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) -MF $@.d $(AGENT_CFLAGS) -O1 $(SAN_ASAN) -pthread $< $(AGENT_ASAN_OBJS) -o $@ \
		$(AGENT_LIBS) $(LIB_LIBS) $(GTEST_LIBS) -ldl
$(BUILD)/libmapscope_preload.tsan.so: $(PRELOAD_SRCS) $(PROBE_HDRS) | $(BUILD)
	$(call msg,CXX-TSAN,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) -MF $@.d -O1 $(SAN_TSAN) -DMAPSCOPE_PRELOAD_TSAN -fPIC -shared \
		-fvisibility=hidden -fno-exceptions -fno-rtti $(PRELOAD_SRCS) -o $@ -Wl,--as-needed -ldl -lpthread
$(BUILD)/tests/preload_storm.tsan: tests/fixtures/preload_storm.cc $(PROBE_HDRS) | $(BUILD)/tests
	$(call msg,CXX-TSAN,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) -MF $@.d -O1 $(SAN_TSAN) -pthread $< -o $@ -ldl

# The library's libFuzzer target (tests/fuzz/): clang, since libFuzzer is
# clang's; `make test-long` runs it for a minute.
$(BUILD)/tests/sync_map_fuzz: tests/fuzz/sync_map_fuzz.cc $(PROBE_HDRS) | $(BUILD)/tests
	$(call msg,FUZZ,$@)
	$(Q)clang++ $(CXXSTD) $(WARN) -g -O1 $(INCLUDES) $(LIB_CFLAGS) -MMD -MP \
		-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
		$< -o $@ $(LIB_LIBS)

$(BUILD)/tests/lib%.so: tests/fixtures/lib%.cc $(PROBE_HDRS) | $(BUILD)/tests
	$(call msg,CXX,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) $(FIXTURE_FLAGS) -fPIC -shared $< -o $@ $(LIB_LIBS)
# A probed library dlclose() really unmaps: no STB_GNU_UNIQUE symbols (they
# make glibc keep an object loaded forever); tests/fault_lifecycle_test.cc.
$(BUILD)/tests/libfault_dl.so: FIXTURE_FLAGS := -fno-gnu-unique

$(BUILD)/tests/%: tests/fixtures/%.cc $(PROBE_HDRS) $(FIXTURE_LIBS) | $(BUILD)/tests
	$(call msg,CXX,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) -pthread $< -o $@ -L$(BUILD)/tests -Wl,-rpath,'$$ORIGIN' $(LIB_LIBS) -ldl

.PHONY: all
all: deps-auto
	$(Q)$(MAKE) --no-print-directory build-all

.PHONY: build-all
build-all: $(PROBE_HDRS) $(MAPLOAD) $(MAPSCOPE) $(PRELOAD_SO)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---------------------------------------------------------------------------
# Packages.  `deps-auto` installs only what is missing (no apt-get update
# when nothing is); `deps` always refreshes and installs.

.PHONY: deps deps-auto
# With recommends: the set the test suite was run against (BCC's static
# archive and Prometheus's promtool among what it links and runs).
deps:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEB_PKGS)

deps-auto:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "  DEPS     installing:" $$missing; \
	  if [ "$$(id -u)" != 0 ]; then echo "make: missing packages ($$missing); run 'sudo make deps'" >&2; exit 1; fi; \
	  $(MAKE) --no-print-directory deps; \
	fi

# ---------------------------------------------------------------------------
# Tests.

.PHONY: test test-run test-long
test: deps-auto
	$(Q)$(MAKE) --no-print-directory test-run

test-run: $(TEST_DEPS)
	$(Q)tests/run_tests.sh $(BUILD)

test-long: deps-auto
	$(Q)$(MAKE) --no-print-directory test-long-run

test-long-run: $(TEST_DEPS)
	$(Q)SYNCMAP_LONG=1 tests/run_tests.sh $(BUILD)
	$(Q)$(MAKE) --no-print-directory $(BUILD)/tests/sync_map_fuzz && mkdir -p $(BUILD)/tests/sync_map_fuzz.corpus && $(BUILD)/tests/sync_map_fuzz -max_total_time=60 -detect_leaks=0 -artifact_prefix=$(BUILD)/tests/ $(BUILD)/tests/sync_map_fuzz.corpus

# ---------------------------------------------------------------------------
# Benchmarks (tools/bench/, see tools/bench/README.md) -- begin
#
# build/bench/mapbench: one Google Benchmark binary, every contender in its
# own translation unit; c_syncmap_noprobes.cc is built with
# -DSYNCMAP_NO_PROBES (and instantiates SyncMap with its own Hash type, so the
# two builds of the template stay distinct).
#   make bench         full matrix + bytes/entry (~20 min on 2 cores)
#   make bench-quick   reduced matrix, < 3 min
#   BENCH_ARGS=...     extra flags, e.g. BENCH_ARGS='--workloads=read100 --reps=7'
# Both write build/bench/summary.json (+ inflection.json, memory.json, and
# Google Benchmark's raw per-run JSON in raw.json / raw-quick.json).

BENCH_SRCS    := $(filter-out tools/bench/c_syncmap_noprobes.cc,$(wildcard tools/bench/*.cc))
BENCH_OBJS    := $(patsubst tools/bench/%.cc,$(BUILD)/obj/bench/%.o,$(BENCH_SRCS)) \
                 $(if $(wildcard tools/bench/c_syncmap_noprobes.cc),$(BUILD)/obj/bench/c_syncmap_noprobes.o)
PKGS_BENCH    := benchmark tbb liburcu-cds liburcu-memb
BENCH_CFLAGS   = $(shell pkg-config --cflags $(PKGS_BENCH)) -DNDEBUG
BENCH_LIBS     = $(shell pkg-config --libs $(PKGS_BENCH)) $(LIB_LIBS)
MAPBENCH      := $(BUILD)/bench/mapbench
BENCH_ARGS    ?=

$(BUILD)/obj/bench/c_syncmap_noprobes.o: tools/bench/c_syncmap_noprobes.cc $(PROBE_HDRS)
	$(call msg,CXX,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CXX) $(ALL_CXXFLAGS) $(BENCH_CFLAGS) -DSYNCMAP_NO_PROBES -c $< -o $@

$(BUILD)/obj/bench/%.o: tools/bench/%.cc $(PROBE_HDRS)
	$(call msg,CXX,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CXX) $(ALL_CXXFLAGS) $(BENCH_CFLAGS) -c $< -o $@

$(MAPBENCH): $(BENCH_OBJS) | $(BUILD)/bench
	$(call msg,LINK,$@)
	$(Q)$(CXX) $^ -o $@ $(BENCH_LIBS)

.PHONY: bench bench-run bench-quick bench-quick-run
bench: deps-auto
	$(Q)$(MAKE) --no-print-directory bench-run

bench-run: $(MAPBENCH)
	$(Q)$(MAPBENCH) --memory --json=$(BUILD)/bench/summary.json \
		--benchmark_out=$(BUILD)/bench/raw.json --benchmark_out_format=json $(BENCH_ARGS)

bench-quick: deps-auto
	$(Q)$(MAKE) --no-print-directory bench-quick-run

bench-quick-run: $(MAPBENCH)
	$(Q)$(MAPBENCH) --quick --seconds=0.4 --json=$(BUILD)/bench/summary.json \
		--benchmark_out=$(BUILD)/bench/raw-quick.json --benchmark_out_format=json $(BENCH_ARGS)

# make bench-tracing: what tracing costs the traced process (issue 7), against
# bpftrace and libbpf-tools' memleak; tools/bench/tracing.py runs it and writes
# build/bench/tracing.json.  QUICK=1 shortens it (1 repetition, shorter
# runs); TRACING_ARGS=... passes flags (tools/bench/tracing.py --help).
# MEMLEAK=/path/to/memleak: libbpf-tools' memleak, which Debian 12's
# libbpf-tools (0.26) does not ship; without it that row is left empty.
#   build/bench/malloc_loop   the malloc-heavy loop (tools/bench/tracing/)
#   build/bench/libfloor_*.so the cheapest possible preload shims, for scale
TRACING_BINS  := $(BUILD)/bench/malloc_loop $(BUILD)/bench/libfloor_forward.so \
                 $(BUILD)/bench/libfloor_request.so
TRACING_ARGS  ?=
MEMLEAK       ?=

$(BUILD)/bench/malloc_loop: tools/bench/tracing/malloc_loop.cc $(PROBE_HDRS) | $(BUILD)/bench
	$(call msg,CXX,$@)
	$(Q)$(CXX) $(ALL_CXXFLAGS) -pthread $< -o $@ $(LIB_LIBS) -ldl
$(BUILD)/bench/libfloor_forward.so: tools/bench/tracing/floor_shim.c | $(BUILD)/bench
	$(call msg,CC,$@)
	$(Q)$(CC) -O2 -g -Wall -Werror -fPIC -shared -fvisibility=hidden $< -o $@
$(BUILD)/bench/libfloor_request.so: tools/bench/tracing/floor_shim.c | $(BUILD)/bench
	$(call msg,CC,$@)
	$(Q)$(CC) -O2 -g -Wall -Werror -fPIC -shared -fvisibility=hidden -DCOUNT_REQUEST $< -o $@

.PHONY: bench-tracing bench-tracing-run
bench-tracing: deps-auto
	$(Q)$(MAKE) --no-print-directory bench-tracing-run

bench-tracing-run: $(MAPLOAD) $(MAPSCOPE) $(PRELOAD_SO) $(TRACING_BINS)
	$(Q)tools/kernel-fs.sh
	$(Q)python3 tools/bench/tracing.py --build $(BUILD) $(if $(filter 1,$(QUICK)),--quick) \
		$(if $(MEMLEAK),--memleak $(MEMLEAK)) $(TRACING_ARGS)

# Benchmarks -- end

# ---------------------------------------------------------------------------
# Demo, install, clean.

.PHONY: demo demo-run
demo: deps-auto
	$(Q)$(MAKE) --no-print-directory demo-run

demo-run: $(MAPLOAD) $(MAPSCOPE) $(PRELOAD_SO)
	$(Q)tools/kernel-fs.sh
	$(Q)tools/demo.sh $(BUILD)

.PHONY: install
install: $(PROBE_HDRS)
	install -d $(DESTDIR)$(PREFIX)/include/syncmap $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 include/syncmap/*.h $(PROBE_HDRS) $(DESTDIR)$(PREFIX)/include/syncmap/
	sed -e 's|@PREFIX@|$(PREFIX)|' tools/syncmap.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/syncmap.pc

.PHONY: clean
clean:
	rm -rf $(BUILD)

.DELETE_ON_ERROR:
.SECONDARY:
