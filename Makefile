# The two set-up commands of the README. Both install what is missing first.
.PHONY: demo test deps

deps:
	./scripts/install-deps.sh

demo:
	./scripts/install-deps.sh --examples
	./scripts/demo.sh

test: deps
	swift build --build-tests
	swift test
