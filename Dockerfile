# The ebb image: a static ebb binary on distroless, run as a non-root user. gitsource uses
# go-git and kustomize is linked in, so the image needs neither git nor a shell.
#
#   docker build -t ghcr.io/ebb-dev/ebb:0.1.0 .

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags "-s -w" -o /out/ebb ./cmd/ebb

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ebb /usr/local/bin/ebb
# 65532 is distroless' nonroot user; the chart runs as the same user and group.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ebb"]
CMD ["run", "--help"]
