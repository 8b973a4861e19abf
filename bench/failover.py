#!/usr/bin/env python3
"""Failover of a virtual address in front of a server that runs on every node:
baton against keepalived, side by side in the same run, with the lab's probe and
driver (bench/lab/).

    bench/failover.py [--runs 10] [--topology 2w,3] [--fault kill,freeze,isolate]
                      [--product baton,keepalived-0.1,keepalived-1] [--out DIR]

Run as root from the repository root. Every case builds the namespace lab
(bench/lab/netns.sh, prefix plabf, addresses in 198.18.0.0/15 only), starts the
responder on every node and the product in front of it, waits until n1 answers
at 198.18.2.100:8080, then the driver injects the fault on n1 and measures the
gap a client sees (a TCP probe every 10 ms from the client namespace) and whether
the address was on two nodes at once (an observer polls every node's addresses
every 20 ms). The lab is torn down after every run.

Topologies: `2w` is two nodes and a witness file (baton; keepalived has no
witness), with a health check of the service LAN's gateway; `3` is three nodes.
Faults on the owner n1: `kill` (SIGSTOP, then SIGKILL, of every process in its
namespace: all at once, as in a crash),
`freeze` (SIGSTOP of every process), `isolate` (both its links down).

baton runs the fast timing profile with the `lab-fence` agent (a power switch
for a namespace: it takes the node's network off and kills its processes), the
responder as a clone and the address as a standby `ipaddr` service.
keepalived (Debian's package) runs VRRP version 3 (VRRPv2 rounds 0.1 s up to
1 s) on the service LAN with advert 0.1 s or 1 s, priorities 150/100/50, the
responder started beside it.

Writes DIR/CASE.json (the driver's full output) and DIR/RESULTS.md (tables with
the ratios), DIR defaulting to target/bench-failover.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(ROOT, "bench", "lab")
PREFIX = "plabf"
VIP = "198.18.2.100"
STATE = "/tmp/baton-failover-bench"
BATON = os.path.join(ROOT, "target", "release", "baton")


def sh(cmd, check=True, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=check, **kw)


def ns(n):
    return f"{PREFIX}-n{n}"


def netns(*args):
    env = dict(os.environ, PLAB_PREFIX=PREFIX)
    sh([os.path.join(LAB, "netns.sh"), *map(str, args)], env=env, stdout=subprocess.DEVNULL)


def spawn(n, argv, log):
    """Start argv in node n's namespace, detached from us (own session)."""
    with open(log, "ab") as out:
        subprocess.Popen(["ip", "netns", "exec", ns(n), *argv], stdin=subprocess.DEVNULL,
                         stdout=out, stderr=out, start_new_session=True)


def wait_steady(nodes, limit=30.0):
    """Until n1 answers at the virtual address and every node at its own address."""
    code = f"""
import socket, sys, time
def ask(addr):
    try:
        with socket.create_connection((addr, 8080), timeout=0.2) as s:
            return s.recv(64).decode().strip()
    except OSError:
        return None
deadline = time.time() + {limit}
while time.time() < deadline:
    if ask("{VIP}") == "n1" and all(ask("198.18.2.%d" % (10 + i)) == "n%d" % i for i in range(1, {nodes} + 1)):
        sys.exit(0)
    time.sleep(0.05)
sys.exit(1)
"""
    r = sh(["ip", "netns", "exec", f"{PREFIX}-client", sys.executable, "-c", code], check=False)
    if r.returncode != 0:
        raise SystemExit(f"setup: the cluster did not reach its steady state within {limit} s; logs in {STATE}")


def baton_config(nodes, witness):
    lines = [
        "[agents]", f'store = "{STATE}/store"',
        "[cluster]", 'name = "bench"', f'key_file = "{STATE}/key"', 'timing = "fast"',
        "self_fence_ms = 300",
        "[cluster.fencing]", 'agent = "lab-fence"', f'params = {{ state_dir = "{STATE}/run" }}',
        "timeout_ms = 5000",
    ]
    if witness:
        lines += ["[cluster.witness]", f'file = "{STATE}/witness"', "votes = 1",
                  "[cluster.health]", 'checks = ["arp:198.18.2.254"]', "interval_ms = 50",
                  "timeout_ms = 40", "fail_after = 2", "recover_after = 3"]
    for i in range(1, nodes + 1):
        lines += ["[[node]]", f'name = "n{i}"', f"id = {i}",
                  f'links = ["198.18.1.{10 + i}:5405", "198.18.2.{10 + i}:5405"]']
    preferred = ", ".join(f'"n{i}"' for i in range(1, nodes + 1))
    responder = os.path.join(LAB, "responder.py")
    lines += [
        "[[service]]", 'name = "responder"', 'strategy = "clone"', 'without_quorum = "keep"',
        "[[service.resource]]", 'agent = "process"', "monitor_ms = 500",
        f'params = {{ command = "python3 {responder} --name $BATON_NODE", ready_tcp = "127.0.0.1:8080", '
        f'state_dir = "{STATE}/run" }}',
        "[[service]]", 'name = "address"', 'strategy = "standby"', f"preferred = [{preferred}]",
        "[[service.resource]]", 'agent = "ipaddr"', "monitor_ms = 500",
        f'params = {{ address = "{VIP}/24", interface = "svc" }}',
    ]
    return "\n".join(lines) + "\n"


def setup_baton(nodes, witness):
    os.makedirs(f"{STATE}/run")
    os.makedirs(f"{STATE}/store")
    with open(f"{STATE}/key", "wb") as f:
        f.write(b"failover bench key, 32 bytes...!")
    os.chmod(f"{STATE}/key", 0o600)
    cfg = f"{STATE}/cluster.toml"
    with open(cfg, "w") as f:
        f.write(baton_config(nodes, witness))
    for i in range(1, nodes + 1):
        # The fence agent's power switch: the node's namespace, even once every
        # process in it is dead.
        with open(f"{STATE}/run/n{i}.netns", "w") as f:
            f.write(f"/run/netns/{ns(i)}\n")
    for i in range(1, nodes + 1):
        spawn(i, [BATON, "--config", cfg, "run", "--node", f"n{i}",
                  "--status-file", f"{STATE}/n{i}.json", "--socket", f"{STATE}/n{i}.sock",
                  "--pid-file", f"{STATE}/run/n{i}.daemon.pid"], f"{STATE}/n{i}.log")
        if i == 1:
            # n1 first, so it is the owner by preference from the start.
            time.sleep(0.3)


def setup_keepalived(nodes, advert):
    for i in range(1, nodes + 1):
        spawn(i, [sys.executable, os.path.join(LAB, "responder.py"), "--name", f"n{i}"],
              f"{STATE}/responder-n{i}.log")
        conf = f"{STATE}/keepalived-n{i}.conf"
        with open(conf, "w") as f:
            f.write(f"""global_defs {{
  router_id n{i}
  vrrp_version 3
}}
vrrp_instance bench {{
  state {"MASTER" if i == 1 else "BACKUP"}
  interface svc
  virtual_router_id 51
  priority {[150, 100, 50][i - 1]}
  advert_int {advert}
  virtual_ipaddress {{
    {VIP}/24 dev svc
  }}
}}
""")
        spawn(i, ["keepalived", "-n", "-l", "-P", "-f", conf, "-p", f"{STATE}/k-n{i}.pid",
                  "-r", f"{STATE}/k-n{i}.vrrp.pid"], f"{STATE}/keepalived-n{i}.log")


def cmd_setup(product, nodes, witness):
    if os.path.exists(STATE):
        shutil.rmtree(STATE)
    os.makedirs(STATE)
    netns("up", nodes)
    if product == "baton":
        setup_baton(nodes, witness)
    else:
        setup_keepalived(nodes, product.split("-", 1)[1])
    wait_steady(nodes)
    # Quiet time: backups settled, no start-up transient in the measurement.
    time.sleep(1.0)


def fault_cmd(fault):
    if fault == "kill":
        # Stopped first, so no process sees another die (keepalived's VRRP child
        # turns its parent's death into a clean shutdown that hands the address
        # over at once, which a crashed server never does).
        pids = f"$(ip netns pids {ns(1)})"
        return f"kill -STOP {pids}; kill -KILL {pids}"
    if fault == "freeze":
        return f"kill -STOP $(ip netns pids {ns(1)})"
    if fault == "isolate":
        return f"PLAB_PREFIX={PREFIX} {LAB}/netns.sh isolate n1"
    raise SystemExit(f"unknown fault {fault}")


def holders_cmd(nodes):
    return "; ".join(
        f"ip netns exec {ns(i)} ip -o -4 addr show to {VIP} 2>/dev/null | grep -q . && printf 'n{i} '"
        for i in range(1, nodes + 1)
    ) + "; true"


def run_case(a, product, topo, fault):
    nodes = 2 if topo == "2w" else int(topo)
    name = f"{product}-{topo}-{fault}"
    witness = "--witness" if topo == "2w" else ""
    me = os.path.abspath(__file__)
    post = 6.0 if product == "keepalived-1" else 3.0
    out = os.path.join(a.out, name + ".json")
    argv = [
        sys.executable, os.path.join(LAB, "failover-driver.py"), "--name", name,
        "--runs", str(a.runs),
        "--setup", f"{sys.executable} {me} _setup {product} {nodes} {witness}",
        "--fault", fault_cmd(fault),
        "--teardown", f"PLAB_PREFIX={PREFIX} {LAB}/netns.sh down",
        "--target", f"{VIP}:8080", "--probe-prefix", f"ip netns exec {PREFIX}-client",
        "--observe", f"vip={holders_cmd(nodes)}", "--split-brain", r"vip=n\d+ n\d+",
        "--pre", "1.0", "--post", str(post), "--out", out,
    ]
    print(f"== {name}: {a.runs} runs", flush=True)
    sh(argv, stdout=sys.stdout)
    with open(out) as f:
        return json.load(f)


def table(results, products, topologies, faults):
    lines = []
    for topo in topologies:
        title = "2 nodes + witness" if topo == "2w" else f"{topo} nodes"
        lines += [f"### {title}", "",
                  "| fault | product | runs | min | p50 | p90 | max | p50 vs baton | address on two nodes |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for fault in faults:
            base = results.get(("baton", topo, fault), {}).get("summary", {}).get("gap_ms", {})
            for product in products:
                r = results.get((product, topo, fault))
                if r is None:
                    continue
                g = r["summary"].get("gap_ms", {"n": 0})
                split = r["summary"].get("split_brain.vip", {})
                ratio = ""
                if g.get("n") and base.get("n"):
                    ratio = f"{g['median'] / base['median']:.1f}×"
                cells = [g.get(k, "–") for k in ("min", "median", "p90", "max")]
                missing = g.get("missing", 0)
                runs = f"{g.get('n', 0)}" + (f" (+{missing} no failover)" if missing else "")
                lines.append(f"| {fault} | {product} | {runs} | " + " | ".join(map(str, cells)) +
                             f" | {ratio} | {split.get('runs_observed', '?')}/{split.get('runs', '?')} |")
        lines.append("")
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_setup":
        cmd_setup(sys.argv[2], int(sys.argv[3]), "--witness" in sys.argv[4:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--topology", default="2w,3")
    ap.add_argument("--fault", default="kill,freeze,isolate")
    ap.add_argument("--product", default="baton,keepalived-0.1,keepalived-1")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench-failover"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the lab creates network namespaces")
    products = a.product.split(",")
    topologies = a.topology.split(",")
    faults = a.fault.split(",")
    for p in products:
        if p != "baton" and p not in ("keepalived-0.1", "keepalived-1"):
            raise SystemExit(f"--product: unknown {p}; use baton, keepalived-0.1, keepalived-1")
    for t in topologies:
        if t not in ("2w", "3"):
            raise SystemExit(f"--topology: unknown {t}; use 2w (two nodes and a witness) or 3")
    if any(p.startswith("keepalived") for p in products) and not shutil.which("keepalived"):
        print("bench: installing keepalived", file=sys.stderr)
        sh("apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive "
           "apt-get install -y -q --no-install-recommends keepalived >/dev/null")
    if "baton" in products:
        sh(["cargo", "build", "--release", "--locked", "-p", "baton"], cwd=ROOT)
    os.makedirs(a.out, exist_ok=True)
    results = {}
    try:
        for topo in topologies:
            for fault in faults:
                for product in products:
                    results[(product, topo, fault)] = run_case(a, product, topo, fault)
    finally:
        netns("down")
    text = table(results, products, topologies, faults)
    with open(os.path.join(a.out, "RESULTS.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
