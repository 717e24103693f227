# Headwater: one tree, four programs. `make run` and `make test` are the two entry points.
CC      ?= cc
PKGS    := lwip libmicrohttpd libnghttp2 libsodium openssl jansson yaml-0.1 sqlite3 libzstd libcurl
BUILD   ?= build
PREFIX  ?= /usr/local
DESTDIR ?=

# Debian packages `make deps` installs when a pkg-config module (or tool) is missing.
DEB_PKGS := build-essential pkg-config libmicrohttpd-dev libnghttp2-dev libsodium-dev \
            libssl-dev libjansson-dev libyaml-dev libsqlite3-dev libzstd-dev sqlite3 \
            libcurl4-openssl-dev libhttp-parser-dev liblwip-dev python3 iproute2 \
            iptables wireguard-go wireguard-tools iperf3 openssl iputils-ping

WARN    := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter -Wformat=2 -Wvla
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE $(WARN) -I. -MMD -MP
# http_parser (HTTP/1.1 for hwrelay) ships no .pc file.
LDLIBS  += -lpthread -lhttp_parser -lm

ifeq ($(SAN),1)
BUILD   := build-asan
CFLAGS  += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

# pkg-config is only asked when the packages are there, so `make deps` can run first.
HAVE_PKGS := $(shell pkg-config --exists $(PKGS) 2>/dev/null && echo yes)
ifeq ($(HAVE_PKGS),yes)
CFLAGS  += $(shell pkg-config --cflags $(PKGS))
LDLIBS  += $(shell pkg-config --libs $(PKGS))
endif

# Shared code: every program links it.
LIB_SRCS    := $(wildcard common/*.c proto/*.c db/*.c)
# headwater without its main(), so unit tests can link the server modules.
SERVER_SRCS := $(filter-out server/main.c,$(wildcard server/*.c)) $(wildcard api/admin_*.c)
HWCTL_SRCS  := $(wildcard api/hwctl*.c)
# The relay core without its main(): hwrelay and headwater's built-in relay link it.
RELAY_SRCS  := $(filter-out relay/main.c,$(wildcard relay/*.c))
CLIENT_SRCS := $(wildcard client/*.c)
# hwclient without its main(): the benchmarks and unit tests drive its connections too.
CLIENT_LIB_SRCS := $(filter-out client/main.c,$(CLIENT_SRCS))
BENCH_SRCS  := $(wildcard bench/*.c)
# Code the benchmarks share (unit tests link it too to check it): no programs of its own.
BENCH_LIB_SRCS := $(wildcard bench/lib/*.c)
# Helper programs the integration tests run (not tests themselves).
TOOL_SRCS   := $(wildcard tests/tools/*.c)
UNIT_SRCS   := $(wildcard tests/unit/test_*.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
LIB_OBJS    := $(call obj,$(LIB_SRCS))
SERVER_OBJS := $(call obj,$(SERVER_SRCS))
RELAY_OBJS  := $(call obj,$(RELAY_SRCS))
CLIENT_LIB  := $(if $(CLIENT_LIB_SRCS),$(BUILD)/lib/libhwclient.a)
BENCH_LIB   := $(if $(BENCH_LIB_SRCS),$(BUILD)/lib/libhwbench.a)

PROGRAMS := $(BUILD)/headwater $(BUILD)/hwctl $(BUILD)/hwrelay
ifneq ($(CLIENT_SRCS),)
PROGRAMS += $(BUILD)/hwclient
endif
UNIT_BINS  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRCS))
BENCH_BINS := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRCS))
TOOL_BINS  := $(patsubst tests/tools/%.c,$(BUILD)/tools/%,$(TOOL_SRCS))

.PHONY: all deps run test asan unit bench install clean check-deps
all: check-deps $(PROGRAMS) $(UNIT_BINS) $(BENCH_BINS) $(TOOL_BINS)

check-deps:
	@pkg-config --exists $(PKGS) 2>/dev/null || { \
	  echo "missing libraries: run 'make deps' (or: apt-get install $(DEB_PKGS))" >&2; exit 1; }

# Installs only what is missing; a second run does nothing.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(BUILD)/lib/libhw.a: $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/lib/libhwserver.a: $(SERVER_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/lib/libhwrelay.a: $(RELAY_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/lib/libhwclient.a: $(call obj,$(CLIENT_LIB_SRCS))
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/lib/libhwbench.a: $(call obj,$(BENCH_LIB_SRCS))
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

# Archive order matters: each library may only use those after it.
SERVER_LIBS := $(BUILD)/lib/libhwserver.a $(BUILD)/lib/libhwrelay.a $(BUILD)/lib/libhw.a

$(BUILD)/headwater: $(call obj,server/main.c) $(SERVER_LIBS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The server's policy parser and what it needs, so `hwctl policy check` can validate a
# file when no server runs (the rest of the server stays out of hwctl).
HWCTL_POLICY_SRCS := server/policy_parse.c server/hujson.c server/ipset.c

$(BUILD)/hwctl: $(call obj,$(HWCTL_SRCS) $(HWCTL_POLICY_SRCS)) $(BUILD)/lib/libhw.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/hwrelay: $(call obj,relay/main.c) $(BUILD)/lib/libhwrelay.a $(BUILD)/lib/libhw.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/hwclient: $(call obj,client/main.c) $(CLIENT_LIB) $(BUILD)/lib/libhw.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(call obj,tests/unit/%.c) $(BENCH_LIB) $(CLIENT_LIB) $(SERVER_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bench/%: $(call obj,bench/%.c) $(BENCH_LIB) $(CLIENT_LIB) $(SERVER_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tools/%: $(call obj,tests/tools/%.c) $(CLIENT_LIB) $(SERVER_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# The embedded default: SQLite under ./data, 127.0.0.1:8080, built-in relay and STUN.
run: deps
	@$(MAKE) --no-print-directory all
	./$(BUILD)/headwater serve

test: deps
	@$(MAKE) --no-print-directory all
	@python3 tests/run.py --build $(BUILD)

asan: deps
	@$(MAKE) --no-print-directory SAN=1 all
	@HW_SANITIZED=1 python3 tests/run.py --build build-asan

bench: deps
	@$(MAKE) --no-print-directory all
	@python3 bench/run.py --build $(BUILD)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/headwater \
	  $(DESTDIR)$(PREFIX)/share/headwater $(DESTDIR)/lib/systemd/system \
	  $(DESTDIR)/usr/lib/sysusers.d $(DESTDIR)/usr/lib/tmpfiles.d \
	  $(DESTDIR)$(PREFIX)/share/doc/headwater
	install -m 0755 $(PROGRAMS) $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 config-example.yaml derp-example.yaml $(DESTDIR)$(PREFIX)/share/headwater/
	[ -e $(DESTDIR)/etc/headwater/config.yaml ] || \
	  install -m 0640 config-example.yaml $(DESTDIR)/etc/headwater/config.yaml
	for unit in packaging/*.service; do \
	  sed 's#/usr/local#$(PREFIX)#g' $$unit > $(DESTDIR)/lib/systemd/system/$$(basename $$unit); \
	  chmod 0644 $(DESTDIR)/lib/systemd/system/$$(basename $$unit); \
	done
	install -m 0644 packaging/headwater.sysusers $(DESTDIR)/usr/lib/sysusers.d/headwater.conf
	install -m 0644 packaging/headwater.tmpfiles $(DESTDIR)/usr/lib/tmpfiles.d/headwater.conf
	install -m 0644 packaging/hwrelay.sysusers $(DESTDIR)/usr/lib/sysusers.d/hwrelay.conf
	install -m 0644 packaging/hwrelay.tmpfiles $(DESTDIR)/usr/lib/tmpfiles.d/hwrelay.conf
	install -m 0644 README.md docs/*.md $(DESTDIR)$(PREFIX)/share/doc/headwater/

clean:
	rm -rf build build-*
