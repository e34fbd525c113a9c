#!/usr/bin/env node
// Benchmark peer for persistkit: drives backtest-kit's own PersistBase
// (file-per-entity JSON, tmp file + fsync + rename on write).
//
// Usage:
//   node bench.mjs WORKDIR [--rounds K] [--writes N] [--reads N]
//                          [--init-files N] [--concurrency C]
//                          [--create-via json|writeValue] [--keep]
//
// Every run makes its own fresh folder inside WORKDIR and removes it at the
// end (unless --keep). stdout carries exactly one JSON object; anything the
// library prints goes to stderr.
//
// Cases (each repeated K rounds; median/min/max of per-round ops/s):
//   write_seq_same_id      N sequential writeValue() to one id
//   write_seq_distinct_ids N sequential writeValue() to N new ids
//   write_concurrent       N writeValue() to distinct ids, C in flight
//   read_seq               N sequential readValue() over pre-written ids
//   wait_for_init          waitForInit() of a fresh PersistBase over M
//                          pre-created entity files; reported as files/s

import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

// Keep stdout clean for the single JSON result.
const writeStdout = process.stdout.write.bind(process.stdout);
console.log = (...args) => console.error(...args);
console.info = (...args) => console.error(...args);

const HERE = path.dirname(fileURLToPath(import.meta.url));

function usage(msg) {
  if (msg) process.stderr.write(`bench.mjs: ${msg}\n`);
  process.stderr.write(
    "usage: node bench.mjs WORKDIR [--rounds K] [--writes N] [--reads N] " +
      "[--init-files N] [--concurrency C] [--create-via json|writeValue] [--keep]\n",
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    workdir: null,
    rounds: 5,
    writes: 1000,
    reads: 5000,
    initFiles: 10010,
    concurrency: 16,
    createVia: "json",
    keep: false,
  };
  const intFlag = { "--rounds": "rounds", "--writes": "writes", "--reads": "reads", "--init-files": "initFiles", "--concurrency": "concurrency" };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "-h" || a === "--help") usage();
    if (a === "--keep") { opts.keep = true; continue; }
    if (a === "--create-via") {
      const v = argv[++i];
      if (v !== "json" && v !== "writeValue") usage(`--create-via must be json or writeValue, got ${v}`);
      opts.createVia = v;
      continue;
    }
    if (a in intFlag) {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 1) usage(`${a} needs a positive integer`);
      opts[intFlag[a]] = v;
      continue;
    }
    if (a.startsWith("-")) usage(`unknown option ${a}`);
    if (opts.workdir !== null) usage("only one WORKDIR");
    opts.workdir = a;
  }
  if (opts.workdir === null) usage("WORKDIR is required");
  return opts;
}

const PAYLOAD_BYTES = 300;

// A ~300-byte trading signal; JSON.stringify(makeSignal(i)) is exactly
// PAYLOAD_BYTES bytes for every i < 10^9 (the note field is padded).
function makeSignal(i) {
  const n = String(i).padStart(9, "0");
  const sig = {
    id: `0b6f1c2e-4d3a-4f5b-9c8d-${n.slice(0, 9).padStart(12, "0")}`,
    symbol: "BTCUSDT",
    strategyName: "bench-strategy",
    position: i % 2 === 0 ? "long" : "short",
    priceOpen: 64250.5,
    priceTakeProfit: 66180.25,
    priceStopLoss: 63290.75,
    scheduledAt: 1735689600000 + i,
    pendingAt: 1735689660000 + i,
    note: "",
  };
  const base = Buffer.byteLength(JSON.stringify(sig));
  sig.note = "persistkit benchmark signal ".padEnd(PAYLOAD_BYTES - base, "x");
  return sig;
}

const idOf = (i) => `sig-${String(i).padStart(6, "0")}`;

function stats(values) {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  const r = (x) => Math.round(x * 10) / 10;
  return { median: r(median), min: r(s[0]), max: r(s[s.length - 1]), samples: values.map(r) };
}

async function timeOps(n, fn) {
  const t0 = performance.now();
  await fn();
  const secs = (performance.now() - t0) / 1000;
  return n / secs;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const require = createRequire(path.join(HERE, "package.json"));
  let pkgPath;
  try {
    pkgPath = require.resolve("backtest-kit/package.json");
  } catch {
    // package.json is not exported: locate it next to the resolved entry.
    const entry = require.resolve("backtest-kit");
    pkgPath = path.join(entry.slice(0, entry.lastIndexOf(`${path.sep}node_modules${path.sep}backtest-kit`) + `${path.sep}node_modules${path.sep}backtest-kit`.length), "package.json");
  }
  const version = JSON.parse(await fs.readFile(pkgPath, "utf8")).version;
  const { PersistBase } = await import("backtest-kit");
  if (typeof PersistBase !== "function") throw new Error("backtest-kit did not export PersistBase");

  await fs.mkdir(opts.workdir, { recursive: true });
  const root = await fs.mkdtemp(path.join(path.resolve(opts.workdir), "btk-bench-"));
  const K = opts.rounds;
  const N_W = opts.writes;
  const N_R = opts.reads;
  const M = opts.initFiles;
  const C = opts.concurrency;
  const payloads = Array.from({ length: Math.max(N_W, N_R, M) }, (_, i) => makeSignal(i));
  const results = {};
  const roundsOf = { write_seq_same_id: [], write_seq_distinct_ids: [], write_concurrent: [], read_seq: [], wait_for_init: [] };

  try {
    // Sanity: a value written by writeValue reads back equal and the file holds
    // exactly the expected JSON.
    {
      const p = new PersistBase("sanity", root);
      await p.waitForInit(true);
      await p.writeValue("probe", payloads[0]);
      const back = await p.readValue("probe");
      if (JSON.stringify(back) !== JSON.stringify(payloads[0])) throw new Error("sanity: read-back mismatch");
      const raw = await fs.readFile(path.join(root, "sanity", "probe.json"), "utf8");
      if (raw !== JSON.stringify(payloads[0])) throw new Error("sanity: on-disk bytes differ from JSON.stringify(entity)");
    }

    for (let k = 0; k < K; k++) {
      // 1. sequential, same id (replace an existing file each time after the first)
      {
        const p = new PersistBase(`w_same_${k}`, root);
        await p.waitForInit(true);
        roundsOf.write_seq_same_id.push(await timeOps(N_W, async () => {
          for (let i = 0; i < N_W; i++) await p.writeValue("BTCUSDT", payloads[i]);
        }));
      }
      // 2. sequential, distinct ids (each write creates a new file)
      {
        const p = new PersistBase(`w_distinct_${k}`, root);
        await p.waitForInit(true);
        roundsOf.write_seq_distinct_ids.push(await timeOps(N_W, async () => {
          for (let i = 0; i < N_W; i++) await p.writeValue(idOf(i), payloads[i]);
        }));
      }
      // 3. C writes in flight, distinct ids
      {
        const p = new PersistBase(`w_conc_${k}`, root);
        await p.waitForInit(true);
        let next = 0;
        const worker = async () => {
          for (;;) {
            const i = next++;
            if (i >= N_W) return;
            await p.writeValue(idOf(i), payloads[i]);
          }
        };
        roundsOf.write_concurrent.push(await timeOps(N_W, async () => {
          await Promise.all(Array.from({ length: Math.min(C, N_W) }, worker));
        }));
      }
    }

    // 4. reads: one entity with N_R files (created once), read sequentially.
    {
      const p = new PersistBase("reads", root);
      await p.waitForInit(true);
      const dir = path.join(root, "reads");
      for (let i = 0; i < N_R; i++) await fs.writeFile(path.join(dir, `${idOf(i)}.json`), JSON.stringify(payloads[i]));
      for (let k = 0; k < K; k++) {
        roundsOf.read_seq.push(await timeOps(N_R, async () => {
          for (let i = 0; i < N_R; i++) {
            const v = await p.readValue(idOf(i));
            if (v.scheduledAt !== payloads[i].scheduledAt) throw new Error(`read mismatch at ${i}`);
          }
        }));
      }
    }

    // 5. waitForInit over M pre-created files. waitForInit is a singleshot per
    // instance, so every round uses a fresh PersistBase on the same folder.
    {
      const dir = path.join(root, "init");
      await fs.mkdir(dir, { recursive: true });
      if (opts.createVia === "writeValue") {
        const p = new PersistBase("init", root);
        await p.waitForInit(true);
        for (let i = 0; i < M; i++) await p.writeValue(idOf(i), payloads[i]);
      } else {
        for (let i = 0; i < M; i++) await fs.writeFile(path.join(dir, `${idOf(i)}.json`), JSON.stringify(payloads[i]));
      }
      for (let k = 0; k < K; k++) {
        const p = new PersistBase("init", root);
        roundsOf.wait_for_init.push(await timeOps(M, () => p.waitForInit(true)));
      }
      const left = (await fs.readdir(dir)).filter((f) => f.endsWith(".json")).length;
      if (left !== M) throw new Error(`waitForInit removed files: ${M} -> ${left}`);
    }
  } finally {
    if (!opts.keep) await fs.rm(root, { recursive: true, force: true });
  }

  const unit = { wait_for_init: "files/s" };
  const opsOf = { write_seq_same_id: N_W, write_seq_distinct_ids: N_W, write_concurrent: N_W, read_seq: N_R, wait_for_init: M };
  for (const [name, vals] of Object.entries(roundsOf)) {
    results[name] = { unit: unit[name] ?? "ops/s", ops_per_round: opsOf[name], ...stats(vals) };
  }
  results.write_concurrent.in_flight = C;
  results.wait_for_init.created_via = opts.createVia;

  const out = {
    peer: "backtest-kit",
    peer_version: version,
    api: "PersistBase (writeValue: tmp file + fsync + rename, no directory fsync)",
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    cpus: os.cpus().length,
    workdir: path.resolve(opts.workdir),
    rounds: K,
    payload_bytes: Buffer.byteLength(JSON.stringify(payloads[0])),
    statistic: "per-round ops/s; median, min, max over rounds",
    cases: results,
  };
  writeStdout(JSON.stringify(out) + "\n");
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`bench.mjs failed: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
