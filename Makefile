.DEFAULT_GOAL := help

BUF     := tools/npm/node_modules/.bin/buf
TSC     := tools/npm/node_modules/.bin/tsc
GOTOOL  := go tool -modfile=tools/go.mod
ARGS    ?=

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z0-9/_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

.PHONY: run
run: ## run taskhub on 127.0.0.1:8080 with its data in ./data (ARGS="--flag value" to pass flags)
	go run ./cmd/taskhub $(ARGS)

.PHONY: build
build: ## build bin/taskhub
	go build -buildvcs=true -o bin/taskhub ./cmd/taskhub

.PHONY: build/ts
build/ts: $(BUF) ## build the TypeScript client package into clients/ts/dist
	$(TSC) -p clients/ts

.PHONY: release
release: ## static binaries for linux and darwin, amd64 and arm64, in dist/, stamped with the version and commit
	@for os in linux darwin; do for arch in amd64 arm64; do \
		echo "dist/taskhub-$$os-$$arch"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch go build -trimpath -buildvcs=true -o dist/taskhub-$$os-$$arch ./cmd/taskhub || exit 1; \
	done; done

.PHONY: test
test: $(BUF) ## run every test with the race detector (starts its own servers on 127.0.0.1), the load tool's too
	go test -race -timeout 10m ./...
	go -C tools/load test -race -timeout 5m ./...

.PHONY: test/cluster
test/cluster: ## kill nodes of a 3-node cluster under load, leader and followers in turn (make test kills one)
	TASKHUB_CLUSTER_KILLS=4 go test -race -timeout 15m -count=1 -v -run 'TestCluster_' ./cmd/taskhub/

.PHONY: test/e2e
test/e2e: ## run only the end-to-end tests against a real server, the browser tests among them
	go test -race -timeout 10m ./server/... ./views/browser/...

# The pinned npm packages: the generators, tsc, and what the page and the TypeScript client's
# test import (clients/ts/ts_test.go runs Node on them).
$(BUF): tools/npm/package.json tools/npm/package-lock.json
	npm ci --prefix tools/npm --no-audit --no-fund
	@touch $(BUF)

.PHONY: generate
generate: $(BUF) ## regenerate gen/ and clients/ts/src/gen/ (buf), views/*_templ.go (templ) and the page's script bundle
	$(BUF) lint
	$(BUF) generate
	$(GOTOOL) templ generate -path views
	$(TSC) -p assets
	go -C tools run ./bundle -root ..

.PHONY: checkgenerate
checkgenerate: generate ## fail if generated code is not what make generate makes
	@test -z "$$(git status --porcelain -- gen views assets clients/ts/src)" || \
		(git status --porcelain -- gen views assets clients/ts/src; git --no-pager diff --stat -- gen views assets clients/ts/src; \
		 git --no-pager diff -- gen views assets/src clients/ts/src | head -50; \
		 echo "generated code is stale: run make generate and commit"; exit 1)

.PHONY: lint
lint: $(BUF) ## gofmt, go vet, buf lint and tsc
	@test -z "$$(gofmt -l .)" || (gofmt -l .; echo "run gofmt -w ."; exit 1)
	go vet ./...
	go -C tools vet ./bundle
	go -C tools/load vet ./...
	$(BUF) lint
	$(TSC) -p assets
	$(TSC) -p clients/ts --noEmit

.PHONY: bench
bench: ## run the benchmarks (fan-out by subscriber count, create->complete throughput)
	go test -run '^$$' -bench . -benchmem -count 5 ./actors/ ./rpc/ ./eventlog/

# A count, not a duration: with a duration, Go 1.26's fuzzing coordinator can fail a target that
# found nothing with "context deadline exceeded" as the time runs out (go.dev/issue/75804, fixed in
# Go 1.27). A count has no deadline to race.
FUZZTIME ?= 50000x
FUZZ     := FuzzTaskSpec:. FuzzIDs:. FuzzPageToken:./actors FuzzStrictJSON:./rpc FuzzReportJSON:./rpc FuzzReportResponseJSON:./rpc FuzzTimestampJSON:./rpc FuzzAuthorization:./rpc FuzzSessionCookie:./rpc

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME (50000x: executions) each, from the seed corpora in testdata/fuzz
	@for f in $(FUZZ); do \
		go test -run '^$$' -fuzz "^$${f%%:*}$$" -fuzztime $(FUZZTIME) $${f#*:} || exit 1; \
	done

.PHONY: tidy
tidy: ## tidy go.mod, tools/go.mod and tools/load/go.mod
	go mod tidy
	cd tools && go mod tidy
	cd tools/load && go mod tidy

.PHONY: clean
clean: ## remove build output, the default data dir and installed generators
	rm -rf bin data tools/npm/node_modules clients/ts/dist
