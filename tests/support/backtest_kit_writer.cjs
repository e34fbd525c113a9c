#!/usr/bin/env node
// Writes state with backtest-kit itself (its exported Persist*Adapter singletons,
// the calls its ClientStrategy, ClientRisk and ClientPartial make in live mode),
// so that persistkit's tests read files made by the real package, not by hand.
//
// Usage: node backtest_kit_writer.cjs INSTALL_DIR OPERATIONS_JSON_FILE
//   run in the folder that holds ./dump/data (backtest-kit's paths are relative
//   to the working directory). INSTALL_DIR is the npm project backtest-kit is
//   installed in. OPERATIONS_JSON_FILE holds a list of:
//     {"op": "signal" | "schedule", "row": ROW|null, "symbol", "strategy", "exchange"}
//     {"op": "risk", "positions": [[KEY, POSITION], ...], "risk", "exchange"}
//     {"op": "partial", "data": {SIGNAL_ID: LEVELS}, "symbol", "strategy", "signalId", "exchange"}
//     {"op": "repeat-signal", "row": ROW, "symbol", "strategy", "exchange", "count": N}
//       N writes of the same row; failures are counted, not fatal
//     {"op": "count-signal", "row": ROW, "symbol", "strategy", "exchange", "count": N}
//       N writes of the row, the i-th (from 1) with the id "id-i": a bot that keeps
//       replacing its signal for as long as N allows (a test kills it when done)
//   The string "NaN" anywhere in it is the number NaN (JSON has none):
//   backtest-kit then writes what JSON.stringify makes of it.
// stdout: one JSON object {"version": V, "writes": N, "failures": [MESSAGE, ...]}.
"use strict";

const path = require("node:path");
const fs = require("node:fs");
const { createRequire } = require("node:module");

console.log = (...args) => console.error(...args);
console.info = (...args) => console.error(...args);

async function main() {
  const [installDir, operationsFile] = process.argv.slice(2);
  if (!installDir || !operationsFile) {
    throw new Error("usage: node backtest_kit_writer.cjs INSTALL_DIR OPERATIONS_JSON_FILE");
  }
  const requireThere = createRequire(path.join(installDir, "package.json"));
  const bk = requireThere("backtest-kit");
  const version = JSON.parse(
    fs.readFileSync(path.join(installDir, "node_modules", "backtest-kit", "package.json"), "utf8"),
  ).version;
  const operations = JSON.parse(fs.readFileSync(operationsFile, "utf8"), (_key, value) =>
    value === "NaN" ? NaN : value,
  );
  const when = new Date();
  let writes = 0;
  const failures = [];
  for (const op of operations) {
    if (op.op === "signal") {
      await bk.PersistSignalAdapter.writeSignalData(op.row, op.symbol, op.strategy, op.exchange);
    } else if (op.op === "schedule") {
      await bk.PersistScheduleAdapter.writeScheduleData(op.row, op.symbol, op.strategy, op.exchange);
    } else if (op.op === "risk") {
      await bk.PersistRiskAdapter.writePositionData(op.positions, op.risk, op.exchange, when);
    } else if (op.op === "partial") {
      await bk.PersistPartialAdapter.writePartialData(
        op.data, op.symbol, op.strategy, op.signalId, op.exchange, when,
      );
    } else if (op.op === "repeat-signal") {
      for (let i = 0; i < op.count; i++) {
        try {
          await bk.PersistSignalAdapter.writeSignalData(op.row, op.symbol, op.strategy, op.exchange);
        } catch (error) {
          failures.push(String(error && error.message ? error.message : error));
        }
        writes++;
      }
      continue;
    } else if (op.op === "count-signal") {
      for (let i = 1; i <= op.count; i++) {
        const row = { ...op.row, id: `id-${i}` };
        await bk.PersistSignalAdapter.writeSignalData(row, op.symbol, op.strategy, op.exchange);
        writes++;
      }
      continue;
    } else {
      throw new Error(`unknown operation ${JSON.stringify(op.op)}`);
    }
    writes++;
  }
  process.stdout.write(JSON.stringify({ version, writes, failures }) + "\n");
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : error);
  process.exit(1);
});
