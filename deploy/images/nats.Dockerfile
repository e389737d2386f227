# nats-server built from its Go module at the version pinned in pkg/go.mod
# (github.com/nats-io/nats-server/v2), static, FROM scratch. Drop-in for the
# official `nats` image as the compose file uses it: ENTRYPOINT is the
# server and the command is `-c /etc/nats/nats.conf`.
FROM scratch
ARG VERSION=dev
LABEL org.opencontainers.image.title="candlekeep-nats" \
      org.opencontainers.image.version="${VERSION}"
COPY passwd group /etc/
COPY nats-server /nats-server
COPY --chown=65532:65532 data /data
COPY --chown=65532:65532 tmp /tmp
USER 65532:65532
EXPOSE 4222 6222 8222
ENTRYPOINT ["/nats-server"]
CMD ["-c", "/etc/nats/nats.conf"]
