#!/usr/bin/env bash
# Build the Debian package ringlab-server (cargo-deb): the three binaries, the systemd unit
# (installed, not enabled), /etc/default/ringlab-server, man pages, bash/zsh/fish completions and
# the README. The man pages and completions are printed by the binaries themselves
# (`ringlab-X man`, `ringlab-X completions SHELL`) into target/pkg/ first.
#
#   scripts/package.sh           build it; prints the .deb's path
#   scripts/package.sh --check   build it, install it (dpkg -i; root, or sudo), check that every
#                                file is in place and works, purge it (dpkg -P) and check that
#                                every file is gone. Refuses to touch a ringlab-server package
#                                (or file) it did not install itself.
#
# Any failure ends with one line on stderr naming what failed, and a non-zero exit. cargo-deb is
# installed from crates.io (`cargo install cargo-deb --locked`) when missing.
set -euo pipefail
# A command that fails without its own message still ends in one line saying which.
trap 'echo "package.sh: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."

BINS=(ringlab-server ringlab-client ringlab-bench)
PKG=ringlab-server
OUT=target/pkg
# Set once --check has installed the package: the exit trap then purges it.
INSTALLED_BY_US=0
SUDO=()

die() {
  echo "package.sh: $*" >&2
  exit 1
}

usage() {
  echo "usage: scripts/package.sh [--check]"
}

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  -h | --help) usage; exit 0 ;;
  *) echo "package.sh: unknown argument '$1'; $(usage)" >&2; exit 2 ;;
esac
[ $# -le 1 ] || { echo "package.sh: one argument at most; $(usage)" >&2; exit 2; }

started=$SECONDS
step() { echo "== $* ($((SECONDS - started))s)"; }

# --- Build ---------------------------------------------------------------------------------
step "cargo build --release --locked"
cargo build --release --locked || die "cargo build --release --locked failed"
release="${CARGO_TARGET_DIR:-target}/release"
for bin in "${BINS[@]}"; do
  [ -x "$release/$bin" ] || die "no $release/$bin after the build"
done

step "man pages and completions into $OUT/"
rm -rf "$OUT"
mkdir -p "$OUT/man" "$OUT/completions"
for bin in "${BINS[@]}"; do
  "$release/$bin" man | gzip -9n >"$OUT/man/$bin.1.gz" || die "$bin man failed"
  "$release/$bin" completions bash >"$OUT/completions/$bin.bash" || die "$bin completions bash failed"
  "$release/$bin" completions zsh >"$OUT/completions/_$bin" || die "$bin completions zsh failed"
  "$release/$bin" completions fish >"$OUT/completions/$bin.fish" || die "$bin completions fish failed"
done

if ! cargo deb --version >/dev/null 2>&1; then
  step "installing cargo-deb (cargo install cargo-deb --locked)"
  t0=$SECONDS
  cargo install cargo-deb --locked || die "cargo install cargo-deb --locked failed"
  echo "cargo-deb installed in $((SECONDS - t0))s"
fi

step "cargo deb -p $PKG --no-build"
# cargo-deb warns about every asset path that contains /target/ but does not start with
# target/release/ ("will not be built"): true of the generated files, and meant; drop that line.
deb_out=$(cargo deb -p "$PKG" --no-build 2> >(grep -v "^warning: Only source paths starting with exactly 'target/release/'" >&2)) \
  || die "cargo deb -p $PKG --no-build failed"
deb=$(printf '%s\n' "$deb_out" | tail -n 1)
[ -f "$deb" ] || die "cargo deb did not name a .deb (it printed: $deb_out)"

if [ $check = 0 ]; then
  step "built"
  echo "$deb"
  exit 0
fi

# --- Check: install, inspect, purge ----------------------------------------------------------
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "--check installs the package: run as root, or install sudo"
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

# What must be installed where (the package's contract; the assets in server/Cargo.toml).
EXPECTED=(
  /usr/lib/systemd/system/ringlab-server.service
  /etc/default/ringlab-server
  /usr/share/doc/ringlab-server/README.md
)
for bin in "${BINS[@]}"; do
  EXPECTED+=(
    "/usr/bin/$bin"
    "/usr/share/man/man1/$bin.1.gz"
    "/usr/share/bash-completion/completions/$bin"
    "/usr/share/zsh/vendor-completions/_$bin"
    "/usr/share/fish/vendor_completions.d/$bin.fish"
  )
done

# Refuse to touch what is not ours: an installed (or half-removed) ringlab-server package, or a
# file the package would overwrite (dpkg overwrites files no package owns, and purge deletes them).
status=$(dpkg-query -W -f='${db:Status-Status}' "$PKG" 2>/dev/null || true)
if [ -n "$status" ] && [ "$status" != not-installed ]; then
  die "a $PKG package is already on this system (dpkg status: $status) and this script did not install it; remove it first (dpkg -P $PKG)"
fi
mapfile -t deb_files < <(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ { sub(/^\./, "", $6); print $6 }')
[ ${#deb_files[@]} -gt 0 ] || die "dpkg-deb -c $deb listed no files"
for f in "${deb_files[@]}"; do
  if [ -e "$f" ] || [ -L "$f" ]; then
    die "$f already exists and belongs to no $PKG package: installing would overwrite it and purging would delete it; move it away first"
  fi
done
for f in "${EXPECTED[@]}"; do
  printf '%s\n' "${deb_files[@]}" | grep -qxF "$f" || die "the package lacks $f"
done

# From here on, a failure purges what we installed before it reports.
cleanup() {
  local code=$?
  if [ "$INSTALLED_BY_US" = 1 ]; then
    "${SUDO[@]}" dpkg -P "$PKG" >/dev/null 2>&1 || echo "package.sh: also failed to purge $PKG: run dpkg -P $PKG" >&2
  fi
  exit "$code"
}
trap cleanup EXIT

step "dpkg -i $deb"
log=$(mktemp)
if ! "${SUDO[@]}" dpkg -i "$deb" >"$log" 2>&1; then
  INSTALLED_BY_US=1
  die "dpkg -i $deb failed: $(tail -n 1 "$log")"
fi
INSTALLED_BY_US=1

step "checking the installed files"
mapfile -t listed < <(dpkg -L "$PKG")
for f in "${EXPECTED[@]}"; do
  printf '%s\n' "${listed[@]}" | grep -qxF "$f" || die "dpkg -L $PKG does not list $f"
  [ -f "$f" ] || die "$f is not installed"
done
for bin in "${BINS[@]}"; do
  [ -x "/usr/bin/$bin" ] || die "/usr/bin/$bin is not executable"
  version=$("/usr/bin/$bin" --version 2>&1) || die "/usr/bin/$bin --version failed: $version"
  [[ "$version" == "$bin "* ]] || die "/usr/bin/$bin --version printed '$version'"
  gzip -t "/usr/share/man/man1/$bin.1.gz" || die "/usr/share/man/man1/$bin.1.gz is not gzip"
  if command -v man >/dev/null 2>&1; then
    page=$(man -w "$bin" 2>&1) || die "man -w $bin does not find the page: $page"
    [ "$page" = "/usr/share/man/man1/$bin.1.gz" ] || die "man -w $bin finds $page, not the installed page"
  fi
  # The bash completion, from its installed path: loaded as bash-completion's loader would.
  spec=$(bash --norc --noprofile -c "source /usr/share/bash-completion/completions/$bin && complete -p $bin" 2>&1) \
    || die "the bash completion for $bin does not load: $spec"
  [[ "$spec" == *" -F "*" $bin" ]] || die "the bash completion for $bin registers '$spec'"
  if command -v zsh >/dev/null 2>&1; then
    zsh -n "/usr/share/zsh/vendor-completions/_$bin" || die "the zsh completion for $bin does not parse"
  fi
done
if command -v fish >/dev/null 2>&1; then
  # fish finds vendor completions by itself (no sourcing); an empty home keeps user config out
  # (--no-config would also drop the system completion path).
  fish_home=$(mktemp -d)
  offered=$(HOME="$fish_home" XDG_CONFIG_HOME="$fish_home" XDG_DATA_HOME="$fish_home" \
    fish -c 'complete --do-complete "ringlab-server --io "' 2>&1) || true
  rm -rf "$fish_home"
  grep -q '^uring' <<<"$offered" || die "fish does not complete ringlab-server --io from its vendor directory: $offered"
fi
conffiles=$(dpkg-query -W -f='${Conffiles}' "$PKG")
grep -q '^ /etc/default/ringlab-server ' <<<"$conffiles" || die "/etc/default/ringlab-server is not a conffile"

unit=/usr/lib/systemd/system/ringlab-server.service
# shellcheck disable=SC2016 # the literal $RINGLAB_ARGS, as systemd expands it
grep -qx 'ExecStart=/usr/bin/ringlab-server $RINGLAB_ARGS' "$unit" || die "$unit does not start /usr/bin/ringlab-server \$RINGLAB_ARGS"
if command -v systemd-analyze >/dev/null 2>&1; then
  # As installed, with its Documentation=man:ringlab-server(1) now resolvable.
  verify=$(systemd-analyze verify "$unit" 2>&1) || die "systemd-analyze verify $unit failed: $(grep -m1 ringlab <<<"$verify")"
  if grep -q ringlab <<<"$verify"; then die "systemd-analyze verify $unit warns: $(grep -m1 ringlab <<<"$verify")"; fi
fi
# Nothing was enabled or started.
if [ -e /etc/systemd/system/multi-user.target.wants/ringlab-server.service ]; then
  die "installing enabled ringlab-server.service"
fi

# The installed server runs: epoll (works anywhere), a free loopback port, SIGTERM by PID.
step "starting /usr/bin/ringlab-server"
srv_out=$(mktemp)
/usr/bin/ringlab-server --io epoll --cores 0 --listen 127.0.0.1:0 >"$srv_out" 2>&1 &
srv=$!
for _ in $(seq 100); do
  grep -q '^ready ' "$srv_out" && break
  kill -0 "$srv" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q '^ready ' "$srv_out"; then
  kill -KILL "$srv" 2>/dev/null || true
  die "/usr/bin/ringlab-server printed no ready line: $(tail -n 1 "$srv_out")"
fi
kill -TERM "$srv"
srv_code=0
wait "$srv" || srv_code=$?
[ "$srv_code" = 0 ] || die "/usr/bin/ringlab-server exited $srv_code after SIGTERM: $(tail -n 1 "$srv_out")"
rm -f "$srv_out" "$log"

step "dpkg -P $PKG"
"${SUDO[@]}" dpkg -P "$PKG" >/dev/null 2>&1 || die "dpkg -P $PKG failed"
INSTALLED_BY_US=0
status=$(dpkg-query -W -f='${db:Status-Status}' "$PKG" 2>/dev/null || true)
[ -z "$status" ] || [ "$status" = not-installed ] || die "$PKG is still known to dpkg after purge (status: $status)"
for f in "${listed[@]}"; do
  # Directories the package shares with others (/usr/bin, ...) stay; its own files must not.
  if [ -e "$f" ] && [ ! -d "$f" ]; then die "$f is still there after dpkg -P $PKG"; fi
done
[ ! -e /usr/share/doc/ringlab-server ] || die "/usr/share/doc/ringlab-server is still there after dpkg -P $PKG"
# The maintainer scripts' systemd bookkeeping (deb-systemd-helper's state, a mask) is gone too.
leftover=$(find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled \
  /var/lib/systemd/deb-systemd-helper-masked -name 'ringlab-server*' 2>/dev/null | head -n 1 || true)
[ -z "$leftover" ] || die "$leftover is still there after dpkg -P $PKG"

step "check passed: $deb installed ${#listed[@]} paths, each checked, and purged"
echo "$deb"
