# egresswatch-agent: on erase (not on upgrade), stop and disable the service.
if [ "$1" -eq 0 ]; then
    systemctl disable --now egresswatch-agent.service >/dev/null 2>&1 || :
fi
