# syntax=docker/dockerfile:1
#
# stockd container image.
#
#   docker build -t stockd:dev .
#   docker build --build-arg VERSION=$(git describe --always --dirty) \
#     --build-arg REVISION=$(git rev-parse HEAD) -t stockd:dev .
#
# The final image is distroless (no shell, no package manager), runs as the
# unprivileged "nonroot" user (uid 65532) and holds the static binary and the
# example configuration. Configure it with STOCKD_* environment variables
# (see configs/stockd.example.yaml and docker-compose.yml), or mount your own
# file over /etc/stockd/stockd.yaml.
#
# No HEALTHCHECK: the image has no shell or HTTP client to run one. Probe over
# HTTP from the orchestrator instead: GET /readyz on the hot port (8080)
# answers 200 while the node serves and 503 once it shuts down; GET /healthz
# on either port answers 200 while the process is up.

# The Go version of go.mod: the official images set GOTOOLCHAIN=local, so an
# older Go would refuse the module instead of downloading a newer toolchain.
ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-mod=readonly
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
# Set by buildx for the platform being built (--platform linux/arm64, ...);
# the binary is pure Go, so cross-compiling needs nothing else.
ARG TARGETOS TARGETARCH
# Advertised to the other nodes (GET /admin/cluster shows it); printed by
# `stockd version` and exported as stockd_build_info, with REVISION.
ARG VERSION=dev
ARG REVISION=
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath \
      -ldflags="-s -w -X github.com/stockd/stockd/daemon.Version=${VERSION} -X github.com/stockd/stockd/daemon.Revision=${REVISION}" \
      -o /out/stockd ./daemon/cmd/stockd

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/stockd /stockd
COPY configs/stockd.example.yaml /etc/stockd/stockd.yaml
USER nonroot
# 8080 hot endpoint, 8081 admin API and status page (keep it private),
# 7946 gossip between nodes (TCP and UDP).
EXPOSE 8080/tcp 8081/tcp 7946/tcp 7946/udp
ENTRYPOINT ["/stockd"]
CMD ["-config", "/etc/stockd/stockd.yaml"]
