# skygrid.fabric — the two commands a site admin (or CI) needs on a fresh Debian 12 host, as root:
#   make demo   install what is needed, bring up libvirt, run the demo playbook
#   make test   lint, sanity, unit and integration tests (in that order, failing on any)

SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PYTHONPATH := $(CURDIR)/collections

.PHONY: demo demo-clean demo-vm e2e ee faults faults-sample multihost multihost-sample test deps testbed guest lint sanity unit integration molecule bench build clean

deps:
	scripts/install-deps.sh

testbed: deps
	scripts/testbed.sh start

guest: deps
	tests/guest/build.sh

# BATCH=torque: the same site in a box on the project's TORQUE 6.1.3 test bed (built once, ~7 min)
BATCH ?= slurm
ifeq ($(BATCH),torque)
DEMO_PREREQ := torque
DEMO_ARGS := -e @inventories/local_torque.yml
DEMO_REVERT := playbooks/site_in_a_box_revert.yml
export PATH := /opt/skygrid/torque-6.1.3/bin:/opt/skygrid/torque-6.1.3/sbin:$(PATH)
else ifeq ($(BATCH),slurm)
DEMO_REVERT := playbooks/revert_worker_nodes.yml
else
$(error BATCH must be slurm or torque, not $(BATCH))
endif

demo: testbed $(DEMO_PREREQ)
	ansible-playbook -i inventories/local $(DEMO_ARGS) playbooks/site_in_a_box.yml

demo-clean: testbed $(DEMO_PREREQ)
	ansible-playbook -i inventories/local $(DEMO_ARGS) $(DEMO_REVERT)

demo-vm: testbed guest
	ansible-playbook -i inventories/local playbooks/demo_vm_lifecycle.yml

test: deps
	$(MAKE) lint
	$(MAKE) sanity
	$(MAKE) unit
	$(MAKE) testbed guest
	$(MAKE) integration
	$(MAKE) ee
	$(MAKE) molecule
	$(MAKE) e2e
	$(MAKE) faults-sample
	$(MAKE) multihost-sample

lint:
	scripts/lint.sh
	antsibull-changelog lint

sanity:
	scripts/sanity.sh

unit:
	pytest -q tests/unit

integration: torque-testbed
	pytest -q tests/integration

# Execution-environment metadata, ansible-builder introspect/create, playbooks through ansible-runner (AWX's engine).
ee:
	pytest -q tests/ee

# Torque 6.1.3 from source, once (cached outside the clone), and its one-host test bed
.PHONY: torque torque-testbed
torque: deps
	scripts/torque/build.sh

torque-testbed: torque
	scripts/torque-testbed.sh start

molecule:
	molecule test -s hypervisor

e2e:
	pytest -q tests/e2e

# The fault campaign (tests/faults/harness.py, docs/RELIABILITY.md): every kill point, daemon restart,
# QEMU kill and two runs at once; `make test` runs a sample of it (faults-sample: two kill points and
# the concurrent runs). The store faults (a full image pool, a busy or damaged IPAM database) are in
# make integration (tests/integration/test_fault_*.py).
faults: testbed guest
	python tests/faults/harness.py --points all

faults-sample:
	pytest -q tests/faults

# A site, not a box (scripts/multihost-testbed.sh, docs/MULTIHOST.md): all of it takes ~25 min; make test
# runs the test bed's own checks.
multihost: testbed torque
	pytest -q tests/multihost

multihost-sample: testbed
	pytest -q tests/multihost/test_1_testbed.py

bench: testbed
	python bench/vm_lifecycle/run.py --json .cache/bench/vm_lifecycle.json
	python bench/converge/run.py --json .cache/bench/converge.json

build:
	ansible-galaxy collection build --force --output-path .cache/dist .

clean:
	rm -rf .cache/dist tests/output
