# candlekeep: the static bin/candlekeep, every service a target of it
# (fetcher, writer, backup, monitor, sim, health, ...). FROM scratch: no base
# image, no registry; `make images` builds it from a small context that
# deploy/images/build.sh assembles (the binary, the CA bundle, an empty /data).
FROM scratch
ARG VERSION=dev
LABEL org.opencontainers.image.title="candlekeep" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/candlekeep/candlekeep"
# The host's CA bundle: the default --binance-url (https://api.binance.com)
# and a real S3 endpoint need it; the simulator and a local S3 do not.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY passwd group /etc/
COPY candlekeep /candlekeep
# /data (0700, owned by the service user) so a named volume mounted there
# inherits the owner; /tmp for SQLite's temporary files.
COPY --chown=65532:65532 data /data
COPY --chown=65532:65532 tmp /tmp
USER 65532:65532
WORKDIR /data
ENV CANDLEKEEP_DATA_DIR=/data \
    CANDLEKEEP_LOG_FORMAT=json
ENTRYPOINT ["/candlekeep"]
CMD ["--help"]
