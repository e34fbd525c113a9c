#!/usr/bin/env node
// One sample of one backtest-kit PersistBase operation, for persistkit's
// interleaved benchmark rounds (bench/peers/backtest_kit_peer.py runs it once
// per round, between the Python cases). bench.mjs measures all cases in one go;
// this measures one, so that the rounds interleave and a cold page cache can be
// prepared by the caller right before the timed part.
//
// Usage: node sample.mjs OP BASEDIR COUNT PAYLOAD_JSON
//   write           COUNT sequential writeValue() to one id
//   write-parallel  COUNT writeValue() to distinct ids, 16 in flight
//   read            COUNT sequential readValue() of one id
//   fill            create COUNT entity files for "init" (not timed)
//   init            waitForInit() of a fresh PersistBase over the filled files
// stdout: one JSON object {"operations": N, "seconds": S, "version": V}.

import fs from "node:fs/promises";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";

console.log = (...args) => console.error(...args);
console.info = (...args) => console.error(...args);

const IN_FLIGHT = 16;
const HERE = path.dirname(fileURLToPath(import.meta.url));

async function main() {
  const [op, baseDir, countText, payloadText] = process.argv.slice(2);
  const count = Number(countText);
  if (!op || !baseDir || !Number.isInteger(count) || count < 1 || !payloadText) {
    throw new Error("usage: node sample.mjs OP BASEDIR COUNT PAYLOAD_JSON");
  }
  const payload = JSON.parse(payloadText);
  const version = JSON.parse(
    await fs.readFile(path.join(HERE, "node_modules", "backtest-kit", "package.json"), "utf8"),
  ).version;
  const { PersistBase } = await import("backtest-kit");
  await fs.mkdir(baseDir, { recursive: true });
  const idOf = (i) => `id${String(i).padStart(5, "0")}`;
  let operations = count;
  let seconds = 0;

  if (op === "write" || op === "read") {
    const store = new PersistBase("signal", baseDir);
    await store.waitForInit(true);
    await store.writeValue("same", payload);
    const t0 = performance.now();
    if (op === "write") {
      for (let i = 0; i < count; i++) await store.writeValue("same", payload);
    } else {
      for (let i = 0; i < count; i++) await store.readValue("same");
    }
    seconds = (performance.now() - t0) / 1000;
  } else if (op === "write-parallel") {
    const store = new PersistBase("signal", baseDir);
    await store.waitForInit(true);
    let next = 0;
    const worker = async () => {
      for (let i = next++; i < count; i = next++) await store.writeValue(idOf(i), payload);
    };
    const t0 = performance.now();
    await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, count) }, worker));
    seconds = (performance.now() - t0) / 1000;
  } else if (op === "fill") {
    const dir = path.join(baseDir, "init");
    await fs.mkdir(dir, { recursive: true });
    const text = JSON.stringify(payload);
    for (let i = 0; i < count; i++) await fs.writeFile(path.join(dir, `${idOf(i)}.json`), text);
  } else if (op === "init") {
    const store = new PersistBase("init", baseDir);
    const t0 = performance.now();
    await store.waitForInit(true);
    seconds = (performance.now() - t0) / 1000;
    const left = (await fs.readdir(path.join(baseDir, "init"))).filter((f) => f.endsWith(".json"));
    if (left.length !== count) throw new Error(`waitForInit left ${left.length} of ${count} files`);
    operations = left.length;
  } else {
    throw new Error(`unknown operation ${op}`);
  }
  process.stdout.write(JSON.stringify({ operations, seconds, version }) + "\n");
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`sample.mjs failed: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
