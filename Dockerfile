# teeproxy container image.
#
# The base is pinned by digest (python:3.11-slim-bookworm). The install step is
# scripts/install.sh with the hash-pinned requirements.lock: the very script CI runs on every
# submission (through scripts/test.sh), so what this image installs is what the tests ran on.
# Reproducible builds (pinned apt snapshot, SOURCE_DATE_EPOCH, build attestations) come later.
FROM python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY requirements.lock requirements-test.lock pyproject.toml README.md ./
COPY scripts/install.sh scripts/install.sh
COPY proxy proxy
COPY certmgr certmgr
RUN scripts/install.sh /opt/teeproxy \
    && groupadd --system --gid 10001 teeproxy \
    && useradd --system --uid 10001 --gid teeproxy --home-dir /var/lib/teeproxy \
       --create-home --shell /usr/sbin/nologin teeproxy \
    && chmod 0700 /var/lib/teeproxy

ENV PATH=/opt/teeproxy/bin:$PATH
USER 10001:10001
WORKDIR /var/lib/teeproxy
# TLS listener of the embedded default config; the admin listener stays on loopback.
EXPOSE 8443
STOPSIGNAL SIGTERM
ENTRYPOINT ["teeproxy"]
CMD ["serve"]
