# k3sfleet-coordinator %pre: the k3sfleet system user (the payload's sysusers.d
# file says the same for systemd-sysusers).
getent group k3sfleet >/dev/null || groupadd --system k3sfleet
getent passwd k3sfleet >/dev/null || useradd --system --gid k3sfleet \
    --home-dir /var/lib/k3sfleet/coordinator --no-create-home \
    --shell /sbin/nologin --comment "k3sfleet coordinator" k3sfleet
exit 0
