# Sourced by test.sh (and by up.sh for nginx): installs the Debian packages named in BT_SYSTEM_PACKAGES that are
# missing, as "command:package" pairs (a command, or a path the package installs). CI runs as root; elsewhere sudo
# is used. No browser, database, proxy or PACS is ever downloaded from anywhere but Debian's archive.
_bt_missing=""
for _bt_pair in ${BT_SYSTEM_PACKAGES:-}; do
  _bt_command=${_bt_pair%%:*}
  _bt_package=${_bt_pair#*:}
  # A path that exists counts as installed: not every one is an executable (a plugin's shared library is not).
  if ! command -v "$_bt_command" >/dev/null 2>&1 && [ ! -e "$_bt_command" ]; then
    _bt_missing="$_bt_missing $_bt_package"
  fi
done
if [ -n "$_bt_missing" ]; then
  _bt_sudo=""
  [ "$(id -u)" -eq 0 ] || _bt_sudo="sudo"
  echo "installing Debian packages:$_bt_missing ..."
  $_bt_sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # shellcheck disable=SC2086
  $_bt_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $_bt_missing >/dev/null
fi
unset _bt_missing _bt_pair _bt_command _bt_package _bt_sudo
