#!/bin/busybox sh
# PID 1 of the kernel runner's guest (tests/kernels/README.md). Loads the virtio,
# 9p and overlay modules, sources /plan.sh (a second cpio archive written per
# run by tests/kernels/plan.ts), mounts the host's / (read-only 9p, tag
# "hostroot") under a tmpfs-backed overlay at /newroot, then calls uffd_plan,
# which calls uffd_run for each command. Every command runs chrooted in
# /newroot, in its own session, under a watchdog: past its timeout the
# session's tasks get their kernel stacks and wchan dumped, then SIGKILL. Markers for the host are lines that
# start with "UFFD-"; the last one is "UFFD-EXIT <code>", then power off.

/bin/busybox --install -s /bin
export PATH=/bin
R=/newroot

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

uffd_off() {
  sync
  poweroff -f
  echo o >/proc/sysrq-trigger
  sleep 30
}

uffd_fatal() {
  echo
  echo "UFFD-FATAL $*"
  dmesg | tail -n 30
  echo "UFFD-EXIT 125"
  uffd_off
}

# Centiseconds since boot.
uffd_now() {
  read -r up _ </proc/uptime
  echo $((${up%%.*} * 100 + 1${up#*.} - 100))
}

while read -r m; do
  insmod "/modules/$m" || uffd_fatal "insmod $m"
done </modules/order

[ -f /plan.sh ] || uffd_fatal "no /plan.sh in the initramfs"
. /plan.sh

mkdir -p /host /rw "$R"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro hostroot /host ||
  uffd_fatal "mount 9p hostroot"
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay "$R" ||
  uffd_fatal "mount overlay"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -t devtmpfs devtmpfs "$R/dev"
mkdir -p "$R/dev/pts" "$R/dev/shm" "$R/dev/hugepages"
mount -t devpts devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
mount -t hugetlbfs hugetlbfs "$R/dev/hugepages"
# A fresh tmpfs on /tmp and /run, unless the repo lives there (then the overlay keeps them writable).
case "$UFFD_REPO/" in
/tmp/*) echo "note: the repo is under /tmp: the guest's /tmp is the host's, copy-on-write" ;;
*) mount -t tmpfs -o mode=1777 tmpfs "$R/tmp" ;;
esac
case "$UFFD_REPO/" in
/run/*) ;;
*) mount -t tmpfs -o mode=0755 tmpfs "$R/run" ;;
esac
ip link set lo up 2>/dev/null

export HOME=/root TERM=dumb NO_COLOR=1 DENO_NO_UPDATE_CHECK=1 LANG=C.UTF-8
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Kernel log lines since the current run began (uffd_kmsg0 lines were there before).
uffd_kmsg() {
  dmesg | tail -n +$((uffd_kmsg0 + 1))
}

# The state letter of process $1 (empty when gone).
uffd_state() {
  s=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null)
  echo "${s%% *}"
}

# Kernel stacks of every task in session $1, then the kernel log's tail.
uffd_dump() {
  sid=$1
  echo "UFFD-DUMP-BEGIN $sid"
  for d in /proc/[0-9]*; do
    f=$(sed 's/^.*) //' "$d/stat" 2>/dev/null) || continue
    # After the comm: state ppid pgrp session ...
    set -- $f
    [ "$4" = "$sid" ] || continue
    echo "pid ${d#/proc/} ppid $2 state $1 comm $(cat "$d/comm" 2>/dev/null): $(tr '\0' ' ' <"$d/cmdline" 2>/dev/null)"
    for t in "$d"/task/*; do
      st=$(sed -n 's/^State:[[:space:]]*//p' "$t/status" 2>/dev/null)
      echo "  tid ${t##*/} $(cat "$t/comm" 2>/dev/null) [$st] wchan=$(cat "$t/wchan" 2>/dev/null)"
      sed 's/^/    /' "$t/stack" 2>/dev/null
    done
  done
  echo "--- kernel log since it started (last 60 lines)"
  uffd_kmsg | tail -n 60
  echo "UFFD-DUMP-END $sid"
}

# Kills every process of session $1.
uffd_kill_session() {
  sid=$1
  for d in /proc/[0-9]*; do
    f=$(sed 's/^.*) //' "$d/stat" 2>/dev/null) || continue
    set -- $f
    [ "$4" = "$sid" ] && kill -9 "${d#/proc/}" 2>/dev/null
  done
}

uffd_n=0
uffd_failed=0

# uffd_run <label> <timeout seconds> <sh command line, run chrooted from />
uffd_run() {
  label=$1 limit=$(($2 * 100)) cmd=$3
  uffd_n=$((uffd_n + 1))
  echo
  echo "UFFD-BEGIN $uffd_n $label"
  uffd_kmsg0=$(dmesg | wc -l)
  t0=$(uffd_now)
  setsid chroot "$R" /bin/sh -c "$cmd" </dev/null &
  pid=$!
  how=exited
  while :; do
    st=$(uffd_state "$pid")
    [ -z "$st" ] || [ "$st" = Z ] && break
    if [ $(($(uffd_now) - t0)) -ge "$limit" ]; then
      how=hung
      echo
      echo "UFFD-HANG $uffd_n $label: no exit after $2 s; kernel stacks of its tasks:"
      uffd_dump "$pid"
      uffd_kill_session "$pid"
      i=0
      while [ $i -lt 50 ]; do
        st=$(uffd_state "$pid")
        [ -z "$st" ] || [ "$st" = Z ] && break
        sleep 0.2
        i=$((i + 1))
      done
      if [ -n "$st" ] && [ "$st" != Z ]; then
        echo "UFFD-UNKILLABLE $uffd_n pid $pid state $st"
        rc=137
        break
      fi
      break
    fi
    sleep 0.2
  done
  if [ -z "$st" ] || [ "$st" = Z ]; then
    wait "$pid"
    rc=$?
  fi
  t1=$(uffd_now)
  if [ "$how" = exited ] && [ "$rc" -ge 128 ]; then
    echo
    echo "UFFD-SIGNAL $uffd_n signal $((rc - 128)); kernel log since it started:"
    uffd_kmsg | tail -n 30
  elif uffd_kmsg | grep -qE 'BUG|WARNING|Oops|general protection|segfault|Call Trace|blocked for more|MCE|Out of memory|Killed process'; then
    echo
    echo "UFFD-KMSG $uffd_n the kernel logged trouble while it ran:"
    uffd_kmsg | tail -n 60
  fi
  [ "$rc" -eq 0 ] || uffd_failed=$((uffd_failed + 1))
  echo
  echo "UFFD-END $uffd_n rc=$rc how=$how cs=$((t1 - t0))"
}


if [ -n "$UFFD_THP" ]; then
  echo "$UFFD_THP" >/sys/kernel/mm/transparent_hugepage/enabled || uffd_fatal "cannot set THP to $UFFD_THP"
fi
echo
echo "UFFD-INFO release=$(uname -r) thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled)" \
  "cpus=$(nproc) mem_kb=$(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo) uptime_cs=$(uffd_now)"

uffd_plan

echo
echo "UFFD-EXIT $uffd_failed"
uffd_off
