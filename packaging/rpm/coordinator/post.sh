# k3sfleet-coordinator %post ($1: 1 install, 2 upgrade). The PKI directory; on
# a first install enable the unit and start it only once the config names
# usable credentials, else say what to do next. Upgrades restart in %postun.
if [ ! -d /etc/k3sfleet/pki ]; then
    install -d -o k3sfleet -g k3sfleet -m 0750 /etc/k3sfleet/pki
fi
if [ "$1" -eq 1 ]; then
    systemctl --no-reload enable k3sfleet-coordinator.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        if problem=$(setpriv --reuid=k3sfleet --regid=k3sfleet --init-groups \
            k3sfleet-coordinator check-config --config /etc/k3sfleet/coordinator.toml 2>&1 >/dev/null); then
            systemctl start k3sfleet-coordinator.service >/dev/null 2>&1 || :
        else
            cat >&2 <<MSG
k3sfleet-coordinator is enabled but not started: it has no usable configuration yet.
  $problem
Next:
  1. sudo -u k3sfleet k3sfleet-coordinator ca init --san COORDINATOR-NAME-OR-IP
  2. review /etc/k3sfleet/coordinator.toml
  3. systemctl start k3sfleet-coordinator
MSG
        fi
    fi
fi
