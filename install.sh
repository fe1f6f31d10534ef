#!/usr/bin/env bash
# install.sh: install, upgrade or remove tshjobs on a Debian 12 server.
#
# Usage: ./install.sh [OPTIONS]              as root, on the server
#        ./install.sh --root DIR [OPTIONS]   as any user, into a staging tree
#
# Installs the checkout this script sits in into a virtualenv, creates the
# tshjobs system user, the data directory and the env file, installs the
# systemd units and starts the services. Run it again after updating the
# checkout to upgrade: it rewrites only files whose content differs, and
# restarts a service only when its unit file or the installed package
# changed. The env file is created once and never overwritten.
#
# Options:
#   --prefix DIR   directory of the virtualenv and the install record
#                  (default: /opt/tshjobs)
#   --with-redis   also install redis-server and turn on its append-only
#                  persistence (/etc/redis/tshjobs.conf), so that queued and
#                  scheduled tasks survive a restart of Redis
#   --no-start     do not start or restart the services; they are still
#                  enabled to start at boot
#   --root DIR     install into the staging root DIR: every path is prefixed
#                  with DIR, and apt-get, useradd, chown, systemctl,
#                  redis-cli and `tshjobs doctor` are skipped (each skipped
#                  command is printed). The virtualenv's scripts contain
#                  the absolute path DIR/PREFIX/venv/bin/python, so they run
#                  only where they were staged.
#   --uninstall    stop and disable the services, remove the units and the
#                  virtualenv; keep /etc/tshjobs, /var/lib/tshjobs and the
#                  tshjobs user
#   --purge        --uninstall, then also remove /etc/tshjobs, the data in
#                  /var/lib/tshjobs, the Redis snippet and the tshjobs user
#   -h, --help     print this help and exit
#
# Environment:
#   PYTHON         Python 3.11 or newer that creates the virtualenv
#                  (default: /usr/bin/python3)
#   PIP_*          passed on to pip, for example PIP_INDEX_URL for a mirror
#
# Files (without --root):
#   /opt/tshjobs/venv              the tshjobs package and its dependencies
#   /opt/tshjobs/.installed        version and source hash last installed
#   /etc/tshjobs/tshjobs.env       settings, 0640 root:tshjobs
#   /var/lib/tshjobs               data (SQLite files), 2770 tshjobs:tshjobs
#   /etc/systemd/system/tshjobs.target, tshjobs-consumer.service,
#   tshjobs-dashboard.service      units, 0644 root:root
#   /etc/redis/tshjobs.conf        with --with-redis, 0640 root:redis

if [ -z "${BASH_VERSION:-}" ]; then
    echo "install.sh: error: run this script with bash, not sh" >&2
    exit 1
fi

set -euo pipefail
umask 022

SOURCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SOURCE_DIR
readonly SERVICE_USER=tshjobs
readonly ENV_DIR=/etc/tshjobs
readonly ENV_FILE=/etc/tshjobs/tshjobs.env
readonly DATA_DIR=/var/lib/tshjobs
readonly UNIT_DIR=/etc/systemd/system
readonly UNITS=(tshjobs.target tshjobs-consumer.service tshjobs-dashboard.service)
readonly SERVICES=(tshjobs-consumer.service tshjobs-dashboard.service)
readonly REDIS_CONF=/etc/redis/redis.conf
readonly REDIS_SNIPPET=/etc/redis/tshjobs.conf
readonly REDIS_INCLUDE="include $REDIS_SNIPPET"
readonly REDIS_MARKER="# Added by tshjobs install.sh: append-only persistence of the task queue."
readonly DEBIAN_PACKAGES=(python3-venv python3-dev fonts-dejavu-core)
# The prefix named in the units of packaging/systemd, which install_units
# replaces with --prefix.
readonly TEMPLATE_PREFIX=/opt/tshjobs

PREFIX=/opt/tshjobs
ROOT=""
ACTION=install
PURGE=0
WITH_REDIS=0
START=1
PYTHON=${PYTHON:-/usr/bin/python3}

# Set by the steps, read by start_services.
PACKAGE_CHANGED=0
CHANGED_UNITS=()
# Set by install_file: 1 when it wrote the file, 0 when the file was current.
FILE_CHANGED=0
TEMP_PATHS=()

info() {
    printf 'install.sh: %s\n' "$*" >&2
}

warn() {
    printf 'install.sh: warning: %s\n' "$*" >&2
}

fatal() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

# Print what --root skips, prefixed so that the output reads as a plan.
skipped() {
    info "--root: skipped: $*"
}

usage() {
    # The header comment above, from its second line to the first blank line.
    sed -n '2,/^$/{/^$/q;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

cleanup() {
    if ((${#TEMP_PATHS[@]})); then
        rm -rf -- "${TEMP_PATHS[@]}"
    fi
}
trap cleanup EXIT

# Print PATH (a path on the target system) as it is seen from here.
path() {
    printf '%s%s' "$ROOT" "$1"
}

parse_args() {
    while (($#)); do
        case $1 in
            --prefix)
                (($# >= 2)) || fatal "--prefix requires a directory"
                PREFIX=$2
                shift 2
                ;;
            --prefix=*)
                PREFIX=${1#--prefix=}
                shift
                ;;
            --root)
                (($# >= 2)) || fatal "--root requires a directory"
                ROOT=$2
                shift 2
                ;;
            --root=*)
                ROOT=${1#--root=}
                shift
                ;;
            --with-redis)
                WITH_REDIS=1
                shift
                ;;
            --no-start)
                START=0
                shift
                ;;
            --uninstall)
                ACTION=uninstall
                shift
                ;;
            --purge)
                ACTION=uninstall
                PURGE=1
                shift
                ;;
            -h | --help)
                usage
                exit 0
                ;;
            *)
                fatal "unknown option: $1 (see --help)"
                ;;
        esac
    done

    PREFIX=${PREFIX%/}
    # The prefix ends up in unit files and in a bash substitution, so it is
    # limited to characters that need no quoting in either.
    if [[ ! $PREFIX =~ ^(/[A-Za-z0-9._-]+)+$ || $PREFIX =~ /\.\.?(/|$) ]]; then
        fatal "--prefix must be an absolute path of letters, digits and ._-/, got '$PREFIX'"
    fi

    if [[ -n $ROOT ]]; then
        [[ -d $ROOT ]] || fatal "--root $ROOT: directory not found"
        ROOT=$(cd "$ROOT" && pwd)
        if [[ $ROOT == / ]]; then
            ROOT=""
        fi
    fi
}

check_privileges() {
    if [[ -z $ROOT && $EUID -ne 0 ]]; then
        fatal "must run as root (try: sudo $0), or use --root DIR to stage the files without root"
    fi
}

check_source() {
    [[ -f $SOURCE_DIR/pyproject.toml ]] \
        || fatal "$SOURCE_DIR/pyproject.toml not found: run the install.sh of a tshjobs checkout"
    local name
    for name in "${UNITS[@]}"; do
        [[ -f $SOURCE_DIR/packaging/systemd/$name ]] \
            || fatal "$SOURCE_DIR/packaging/systemd/$name not found: the checkout is incomplete"
    done
}

systemd_running() {
    # sd_booted(3) makes the same check, because systemd creates this
    # directory at boot.
    [[ -d /run/systemd/system ]]
}

# Set the mode of PATH to MODE (octal) unless it already has it.
set_mode() {
    local target=$1 mode=$2
    if [[ $(stat -c %a "$target") != "${mode#0}" ]]; then
        chmod "$mode" "$target"
    fi
}

# Set the owner of PATH to OWNER (user:group) unless it already has it.
# Skipped with --root, where the users may not exist.
set_owner() {
    local target=$1 owner=$2
    [[ -z $ROOT ]] || return 0
    if [[ $(stat -c %U:%G "$target") != "$owner" ]]; then
        chown "$owner" "$target"
    fi
}

# Create the directory DIR (a target path) if missing, with MODE and OWNER.
ensure_dir() {
    local dir=$1 mode=$2 owner=$3
    local real
    real=$(path "$dir")
    if [[ ! -d $real ]]; then
        mkdir -p "$real"
        info "created $dir"
    fi
    set_mode "$real" "$mode"
    set_owner "$real" "$owner"
}

# Install the file SOURCE as DEST (a target path) with MODE and OWNER,
# replacing DEST only when the content differs. Sets FILE_CHANGED.
install_file() {
    local source=$1 dest=$2 mode=$3 owner=$4
    local real tmp
    real=$(path "$dest")
    FILE_CHANGED=0
    if [[ -f $real ]] && cmp -s "$source" "$real"; then
        set_mode "$real" "$mode"
        set_owner "$real" "$owner"
        return 0
    fi

    mkdir -p "$(dirname "$real")"
    tmp=$(mktemp "$real.XXXXXX")
    TEMP_PATHS+=("$tmp")
    cat "$source" >"$tmp"
    chmod "$mode" "$tmp"
    set_owner "$tmp" "$owner"
    mv -f "$tmp" "$real"
    FILE_CHANGED=1
    info "installed $dest"
}

install_debian_packages() {
    local wanted=("${DEBIAN_PACKAGES[@]}")
    if ((WITH_REDIS)); then
        wanted+=(redis-server)
    fi
    if [[ -n $ROOT ]]; then
        skipped "apt-get install ${wanted[*]} (the packages that are missing)"
        return 0
    fi
    command -v apt-get >/dev/null || fatal "apt-get not found: this script supports Debian and its derivatives"

    local missing=() package
    for package in "${wanted[@]}"; do
        if ! dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$package")
        fi
    done
    if ((${#missing[@]} == 0)); then
        info "Debian packages present: ${wanted[*]}"
        return 0
    fi

    info "installing Debian packages: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

check_python() {
    command -v "$PYTHON" >/dev/null || fatal "PYTHON=$PYTHON not found: install python3 or set PYTHON"
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        fatal "PYTHON=$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); tshjobs needs 3.11 or newer"
    fi
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        fatal "PYTHON=$PYTHON cannot create virtualenvs: install the python3-venv package"
    fi
}

create_user() {
    local useradd=(useradd --system --gid "$SERVICE_USER" --home-dir "$DATA_DIR"
        --no-create-home --shell /usr/sbin/nologin --comment "tshjobs background jobs"
        "$SERVICE_USER")
    if [[ -n $ROOT ]]; then
        skipped "groupadd --system $SERVICE_USER; $(printf '%q ' "${useradd[@]}")"
        return 0
    fi
    if ! getent group "$SERVICE_USER" >/dev/null; then
        groupadd --system "$SERVICE_USER"
        info "created the system group $SERVICE_USER"
    fi
    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        "${useradd[@]}"
        info "created the system user $SERVICE_USER (home $DATA_DIR, no login)"
    fi
}

create_directories() {
    ensure_dir "$PREFIX" 0755 root:root
    ensure_dir "$ENV_DIR" 0750 "root:$SERVICE_USER"
    # setgid and group-writable: the ERP, in the tshjobs group, writes the
    # queued row of each task it enqueues to the audit log here.
    ensure_dir "$DATA_DIR" 2770 "$SERVICE_USER:$SERVICE_USER"
    ensure_dir "$UNIT_DIR" 0755 root:root
}

# Print the files that make up the package, NUL-separated and sorted,
# relative to SOURCE_DIR. Tests, docs and packaging are left out, so that
# editing them neither changes the source hash nor restarts the services.
list_source_files() {
    (
        cd "$SOURCE_DIR"
        find . \
            \( -path './.*' -o -path ./tests -o -path ./docs -o -path ./bench \
            -o -path ./packaging -o -path ./install.sh -o -path ./build \
            -o -path ./dist -o -path ./venv -o -path ./demo-data \
            -o -path ./test-artifacts \) -prune -o \
            \( -name __pycache__ -o -name '*.egg-info' -o -name node_modules \) -prune -o \
            -type f ! -name '*.pyc' -print0
    ) | LC_ALL=C sort -z
}

source_sha256() {
    list_source_files | (cd "$SOURCE_DIR" && xargs -0 -r sha256sum) | sha256sum | cut -d ' ' -f 1
}

source_version() {
    "$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
        "$SOURCE_DIR/pyproject.toml"
}

# Print the install record: what the virtualenv must hold to be current.
install_record() {
    local python_minor
    python_minor=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    printf '# Written by install.sh: the source last installed into venv.\n'
    printf 'version=%s\n' "$(source_version)"
    printf 'source_sha256=%s\n' "$(source_sha256)"
    printf 'python=%s\n' "$python_minor"
}

install_virtualenv() {
    check_python
    local venv record_path record staging python_minor
    venv=$(path "$PREFIX/venv")
    record_path=$(path "$PREFIX/.installed")
    record=$(install_record)
    python_minor=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

    # A virtualenv of another Python minor version (after a Debian release
    # upgrade) has its packages in the wrong lib/pythonX.Y, so recreate it.
    if [[ -d $venv && ! -d $venv/lib/python$python_minor/site-packages ]]; then
        info "removing $PREFIX/venv: it was made by a Python other than $python_minor"
        rm -rf -- "$venv"
    fi

    # -I (isolated mode) keeps the current directory, which may be the
    # checkout, off sys.path, so the import finds only the installed package.
    if [[ -x $venv/bin/tshjobs && -f $record_path && $(<"$record_path") == "$record" ]] \
        && "$venv/bin/python" -I -c 'import tshjobs' 2>/dev/null; then
        info "$PREFIX/venv is up to date ($(grep '^version=' <<<"$record"))"
        return 0
    fi

    if [[ ! -d $venv ]]; then
        info "creating the virtualenv $PREFIX/venv with $PYTHON"
        "$PYTHON" -I -m venv "$venv"
    fi

    # pip builds in the source directory, so build from a copy and leave the
    # checkout untouched.
    staging=$(mktemp -d)
    TEMP_PATHS+=("$staging")
    list_source_files | (cd "$SOURCE_DIR" && tar --null --files-from=- -cf -) | tar -xf - -C "$staging"

    info "installing tshjobs $(source_version) from $SOURCE_DIR into $PREFIX/venv (pip)"
    # `python -m pip` rather than bin/pip, because the #! line of bin/pip
    # names the path where the virtualenv was created.
    "$venv/bin/python" -I -m pip install --quiet --no-input --disable-pip-version-check "$staging"
    "$venv/bin/tshjobs" --version >/dev/null || fatal "$PREFIX/venv/bin/tshjobs does not run after pip install"

    local tmp
    tmp=$(mktemp)
    TEMP_PATHS+=("$tmp")
    printf '%s\n' "$record" >"$tmp"
    install_file "$tmp" "$PREFIX/.installed" 0644 root:root
    PACKAGE_CHANGED=1
}

generate_secret() {
    local secret=""
    if command -v openssl >/dev/null; then
        secret=$(openssl rand -hex 32)
    fi
    if [[ ! $secret =~ ^[0-9a-f]{64}$ ]]; then
        secret=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')
    fi
    [[ $secret =~ ^[0-9a-f]{64}$ ]] || fatal "could not generate TSHJOBS_SECRET_KEY (openssl and $PYTHON failed)"
    printf '%s' "$secret"
}

check_env_file_mode() {
    local real=$1 mode
    mode=$(stat -c %a "$real")
    if ((8#$mode & 8#007)); then
        warn "$ENV_FILE is readable by every user but holds the secret key: chmod 0640 $ENV_FILE"
    fi
    if [[ -z $ROOT && $(stat -c %G "$real") != "$SERVICE_USER" ]]; then
        warn "$ENV_FILE is not in group $SERVICE_USER, so the services may not read it: chgrp $SERVICE_USER $ENV_FILE"
    fi
}

write_env_file() {
    local real example tmp secret line replaced=0
    real=$(path "$ENV_FILE")
    example=$SOURCE_DIR/packaging/tshjobs.env.example
    if [[ -e $real ]]; then
        info "keeping the existing $ENV_FILE"
        check_env_file_mode "$real"
        return 0
    fi
    [[ -f $example ]] || fatal "$example not found: the checkout is incomplete"

    secret=$(generate_secret)
    # mktemp creates the file with mode 0600, so the secret is never readable
    # by others, not even before the chmod below.
    tmp=$(mktemp "$real.XXXXXX")
    TEMP_PATHS+=("$tmp")
    # printf is a bash builtin: the secret never appears in a command line.
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line == TSHJOBS_SECRET_KEY=* ]]; then
            printf 'TSHJOBS_SECRET_KEY=%s\n' "$secret"
            replaced=1
        else
            printf '%s\n' "$line"
        fi
    done <"$example" >"$tmp"
    ((replaced)) || fatal "$example has no TSHJOBS_SECRET_KEY= line"

    chmod 0640 "$tmp"
    set_owner "$tmp" "root:$SERVICE_USER"
    mv -f "$tmp" "$real"
    info "created $ENV_FILE (0640 root:$SERVICE_USER) with a new TSHJOBS_SECRET_KEY"
}

install_units() {
    local name content tmp
    for name in "${UNITS[@]}"; do
        content=$(<"$SOURCE_DIR/packaging/systemd/$name")
        content=${content//"$TEMPLATE_PREFIX/"/"$PREFIX/"}
        tmp=$(mktemp)
        TEMP_PATHS+=("$tmp")
        printf '%s\n' "$content" >"$tmp"
        install_file "$tmp" "$UNIT_DIR/$name" 0644 root:root
        if ((FILE_CHANGED)); then
            CHANGED_UNITS+=("$name")
        fi
    done
}

# Turn on append-only persistence in the running Redis. Only the live
# change is safe, because a Redis restarted with appendonly newly set in its
# configuration starts from an empty append-only file and drops its data.
enable_redis_persistence() {
    local cli=(redis-cli -h 127.0.0.1 -p 6379)
    if [[ -n $ROOT ]]; then
        skipped "${cli[*]} CONFIG SET appendonly yes; ${cli[*]} CONFIG SET appendfsync everysec"
        return 0
    fi
    if ! command -v redis-cli >/dev/null || [[ $("${cli[@]}" ping 2>/dev/null) != PONG ]]; then
        warn "Redis on 127.0.0.1:6379 did not reply to PING: before restarting Redis, run: redis-cli CONFIG SET appendonly yes"
        return 0
    fi

    local setting value
    for setting in "appendonly yes" "appendfsync everysec"; do
        value=$("${cli[@]}" CONFIG GET "${setting% *}" | sed -n 2p)
        if [[ $value != "${setting#* }" ]]; then
            "${cli[@]}" CONFIG SET "${setting% *}" "${setting#* }" >/dev/null
            info "Redis: set $setting in the running server"
        fi
    done
}

install_redis_config() {
    ((WITH_REDIS)) || return 0
    install_file "$SOURCE_DIR/packaging/redis-tshjobs.conf" "$REDIS_SNIPPET" 0640 root:redis

    local conf
    conf=$(path "$REDIS_CONF")
    if [[ ! -f $conf ]]; then
        warn "$REDIS_CONF not found: add the line '$REDIS_INCLUDE' to the Redis configuration"
    elif ! grep -qxF "$REDIS_INCLUDE" "$conf"; then
        # At the end, because a later directive overrides an earlier one.
        if [[ -s $conf && $(tail -c 1 "$conf") != "" ]]; then
            printf '\n' >>"$conf"
        fi
        printf '%s\n%s\n' "$REDIS_MARKER" "$REDIS_INCLUDE" >>"$conf"
        info "added '$REDIS_INCLUDE' to $REDIS_CONF"
    fi
    enable_redis_persistence
}

start_services() {
    local restart=()
    if ((PACKAGE_CHANGED)); then
        restart=("${SERVICES[@]}")
    elif ((${#CHANGED_UNITS[@]})); then
        restart=("${CHANGED_UNITS[@]}")
    fi

    if [[ -n $ROOT ]]; then
        skipped "systemctl daemon-reload; systemctl enable --now ${UNITS[*]}"
        return 0
    fi
    if ! systemd_running; then
        warn "systemd is not running (no /run/systemd/system): the units are installed but neither enabled nor started"
        return 0
    fi

    if ((${#CHANGED_UNITS[@]})); then
        systemctl daemon-reload
    fi
    if ((!START)); then
        systemctl enable --quiet "${UNITS[@]}"
        info "--no-start: the services are enabled but were not started or restarted"
        return 0
    fi

    # try-restart acts only on running services. enable --now then starts
    # the stopped ones and leaves running ones alone.
    if ((${#restart[@]})); then
        info "restarting the services whose unit or package changed: ${restart[*]}"
        systemctl try-restart "${restart[@]}"
    fi
    systemctl enable --quiet --now "${UNITS[@]}"
    info "services enabled and running: ${SERVICES[*]}"
}

run_doctor() {
    local command=("$PREFIX/venv/bin/tshjobs" doctor)
    if [[ -n $ROOT ]]; then
        skipped "runuser -u $SERVICE_USER -- ${command[*]}"
        return 0
    fi

    info "checking the settings and connections: runuser -u $SERVICE_USER -- ${command[*]}"
    local status=0
    # Like the services, doctor gets only the env file's settings, a umask
    # of 0027 and the data directory as working directory.
    (
        umask 0027
        cd "$DATA_DIR"
        runuser -u "$SERVICE_USER" -- env -i PATH=/usr/bin:/bin LANG=C.UTF-8 \
            HOME="$DATA_DIR" TSHJOBS_ENV_FILE="$ENV_FILE" timeout 120 "${command[@]}"
    ) || status=$?
    case $status in
        0) ;;
        124) warn "tshjobs doctor timed out after 120 s" ;;
        *) warn "tshjobs doctor found problems (listed above): edit $ENV_FILE, then run it again" ;;
    esac
}

print_next_steps() {
    local tshjobs=$PREFIX/venv/bin/tshjobs bind
    bind=$(sed -n 's/^TSHJOBS_DASHBOARD_BIND=//p' "$(path "$ENV_FILE")" | tail -n 1)
    cat <<EOF

tshjobs is installed. Next steps:
  1. Set the ERP database, Redis and SMTP values in $ENV_FILE, then run
       systemctl restart tshjobs.target
       runuser -u $SERVICE_USER -- $tshjobs doctor
  2. Add a dashboard user (run tshjobs commands as $SERVICE_USER, so that the
     files in $DATA_DIR stay writable by the services):
       runuser -u $SERVICE_USER -- $tshjobs user add admin
  3. Open the dashboard through the ERP's reverse proxy; it listens on
     http://${bind:-127.0.0.1:8080}/
  4. Let the ERP enqueue tasks: add its user to the $SERVICE_USER group so it
     can read $ENV_FILE (usermod -aG $SERVICE_USER ERP_USER).
Logs: journalctl -u tshjobs-consumer -u tshjobs-dashboard
EOF
}

stop_services() {
    if [[ -n $ROOT ]]; then
        skipped "systemctl disable --now ${UNITS[*]}; systemctl daemon-reload"
        return 0
    fi
    if ! systemd_running; then
        warn "systemd is not running (no /run/systemd/system): no service to stop"
        return 0
    fi
    local name present=()
    for name in "${UNITS[@]}"; do
        if [[ -f $UNIT_DIR/$name ]]; then
            present+=("$name")
        fi
    done
    if ((${#present[@]})); then
        # The consumer's stop waits for running tasks, up to its
        # TimeoutStopSec of 330 s.
        info "stopping and disabling ${present[*]}"
        systemctl disable --quiet --now "${present[@]}"
    fi
}

remove_units() {
    local name removed=0
    for name in "${UNITS[@]}"; do
        if [[ -e $(path "$UNIT_DIR/$name") ]]; then
            rm -f -- "$(path "$UNIT_DIR/$name")"
            info "removed $UNIT_DIR/$name"
            removed=1
        fi
    done
    if ((removed)) && [[ -z $ROOT ]] && systemd_running; then
        systemctl daemon-reload
    fi
}

remove_virtualenv() {
    local prefix
    prefix=$(path "$PREFIX")
    if [[ -d $prefix/venv ]]; then
        rm -rf -- "$prefix/venv"
        info "removed $PREFIX/venv"
    fi
    rm -f -- "$prefix/.installed"
    if [[ -d $prefix ]] && ! rmdir -- "$prefix" 2>/dev/null; then
        info "kept $PREFIX: it holds other files"
    fi
}

remove_redis_config() {
    local conf snippet tmp
    conf=$(path "$REDIS_CONF")
    snippet=$(path "$REDIS_SNIPPET")
    if [[ -f $conf ]] && grep -qxF "$REDIS_INCLUDE" "$conf"; then
        # Rewrite in place (cat >) to keep the file's owner and mode.
        tmp=$(mktemp)
        TEMP_PATHS+=("$tmp")
        grep -vxF -e "$REDIS_INCLUDE" -e "$REDIS_MARKER" "$conf" >"$tmp" || true
        cat "$tmp" >"$conf"
        info "removed '$REDIS_INCLUDE' from $REDIS_CONF; Redis keeps append-only persistence until it restarts"
    fi
    if [[ -e $snippet ]]; then
        rm -f -- "$snippet"
        info "removed $REDIS_SNIPPET"
    fi
}

remove_user() {
    if [[ -n $ROOT ]]; then
        skipped "userdel $SERVICE_USER; groupdel $SERVICE_USER"
        return 0
    fi
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        if userdel "$SERVICE_USER"; then
            info "removed the user $SERVICE_USER"
        else
            warn "userdel $SERVICE_USER failed; remove the user by hand"
        fi
    fi
    if getent group "$SERVICE_USER" >/dev/null; then
        if groupdel "$SERVICE_USER"; then
            info "removed the group $SERVICE_USER"
        else
            warn "groupdel $SERVICE_USER failed; remove the group by hand"
        fi
    fi
}

install_tshjobs() {
    check_source
    install_debian_packages
    create_user
    create_directories
    install_virtualenv
    write_env_file
    install_units
    install_redis_config
    start_services
    run_doctor
    print_next_steps
}

uninstall_tshjobs() {
    stop_services
    remove_units
    remove_virtualenv
    if ((!PURGE)); then
        info "kept $ENV_DIR, $DATA_DIR and the $SERVICE_USER user; --purge removes them"
        return 0
    fi

    remove_redis_config
    local dir
    for dir in "$ENV_DIR" "$DATA_DIR"; do
        if [[ -e $(path "$dir") ]]; then
            rm -rf -- "$(path "$dir")"
            info "removed $dir"
        fi
    done
    remove_user
}

main() {
    parse_args "$@"
    check_privileges
    case $ACTION in
        install) install_tshjobs ;;
        uninstall) uninstall_tshjobs ;;
    esac
}

main "$@"
