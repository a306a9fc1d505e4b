# Targets match README. Caches live in $(STATICPODSET_CACHE), outside the clone.
STATICPODSET_CACHE ?= $(HOME)/.cache/staticpodset
export STATICPODSET_CACHE
export CARGO_TARGET_DIR ?= $(STATICPODSET_CACHE)/target

.PHONY: test demo unit lint crds images cluster-up cluster-down bench bench-prepull bench-plan bench-scale kind-up kind-smoke kind-down e2e-kind

## test: everything — lints, unit tests, real cluster up, e2e suites, the scale small shape, cluster down
test:
	bash tests/run-all.sh

## demo: local cluster + chart + examples/static-web.yaml, left running
demo:
	bash tests/e2e/demo.sh

## images: operator and agent OCI archives (images/build.sh)
images:
	bash images/build.sh

## unit: cargo tests only (no cluster)
unit:
	cargo test --workspace

## lint: cargo fmt --check, shellcheck on every script (tests/shellcheck.sh), cargo clippy -D warnings
lint:
	cargo fmt --all -- --check
	bash tests/shellcheck.sh
	cargo clippy --workspace --all-targets -- -D warnings

## crds: regenerate the CRD YAML from the Rust types (crds/ and the chart's copy)
crds:
	cargo run -q -p staticpodset-api --bin crdgen -- crds/
	cargo run -q -p staticpodset-api --bin crdgen -- charts/staticpodset/crds/

## bench: kubelet alone vs DaemonSet vs StaticPodSet, create and update, with the StaticPodSet's hops (needs cluster-up)
bench:
	bash tests/bench/rollout-breakdown.sh

## bench-prepull: per-node outage of an image change, agent image pre-pull on vs off (needs cluster-up)
bench-prepull:
	bash tests/bench/prepull-outage.sh

## bench-plan: the CPU one reconcile's decision costs the operator at 300, 1,000 and 5,000 nodes (no cluster needed)
bench-plan:
	cargo run --release -q -p staticpodset-operator --example plan_cost

## bench-scale: the operator against a real API server with kwok nodes and a simulated agent fleet (SHAPE=small|1k|5k|5k200; no cluster needed)
bench-scale:
	bash tests/scale/bench-scale.sh

cluster-up:
	bash tests/e2e/cluster/up

cluster-down:
	bash tests/e2e/cluster/down

## kind-up: a kind cluster (1 control-plane + 2 workers) from our own builds, with our own dockerd (tests/kind/up.sh)
kind-up:
	bash tests/kind/up.sh

## kind-smoke: our images loaded with kind, the chart installed with helm, a StaticPodSet Ready on every node (needs kind-up)
kind-smoke:
	bash tests/kind/smoke.sh

## e2e-kind: the end-to-end suites on a kind cluster (tests/kind/e2e.sh), deleted afterwards
e2e-kind:
	bash tests/kind/e2e.sh

## kind-down: delete the kind cluster and stop our dockerd
kind-down:
	bash tests/kind/down.sh
