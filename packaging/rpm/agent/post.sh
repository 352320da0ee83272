# k3sfleet-agent %post ($1: 1 install, 2 upgrade). On a first install:
# enable the unit and start it only once the config names usable credentials,
# else say what to do next. Upgrades restart in %postun, as %systemd_postun_with_restart does.
install -d -m 0700 /etc/k3sfleet/agent
if [ "$1" -eq 1 ]; then
    systemctl --no-reload enable k3sfleet-agent.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        if problem=$(k3sfleet-agent check-config --config /etc/k3sfleet/agent.toml 2>&1 >/dev/null); then
            systemctl start k3sfleet-agent.service >/dev/null 2>&1 || :
        else
            cat >&2 <<MSG
k3sfleet-agent is enabled but not started: it has no usable configuration yet.
  $problem
Next:
  1. edit /etc/k3sfleet/agent.toml (role, coordinator.address)
  2. k3sfleet-agent enroll --token-file TOKEN --ca-fingerprint sha256:...
  3. systemctl start k3sfleet-agent
MSG
        fi
    fi
fi
