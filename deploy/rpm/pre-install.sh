# tern's rpm pre-install: the service user and group.
getent group tern >/dev/null || groupadd -r tern
getent passwd tern >/dev/null || \
  useradd -r -g tern -d /nonexistent -s /sbin/nologin -c "tern STUN/TURN relay" tern
exit 0
