# k3sfleet-agent %preun ($1: 0 erase, 1 upgrade): on erase, disable and stop.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now k3sfleet-agent.service >/dev/null 2>&1 || :
fi
