# The ebb image: a static ebb binary on distroless, run as a non-root user. gitsource uses
# go-git and kustomize is linked in, so the image needs neither git nor a shell.
#
#   make image   (docker build --build-arg VERSION=<appVersion of charts/ebb/Chart.yaml> ...)

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# The tag leaves out kustomize's Go plugin loader (see TAGS in the Makefile).
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -tags kustomize_disable_go_plugin_support -ldflags "-s -w -X main.version=${VERSION}" -o /out/ebb ./cmd/ebb

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ebb /usr/local/bin/ebb
# 65532 is distroless' nonroot user; the chart runs as the same user and group.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ebb"]
CMD ["run", "--help"]
