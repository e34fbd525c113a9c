const { PersistBase } = await import(process.cwd() + "/node_modules/backtest-kit/build/index.mjs");
import fs from "fs/promises";
const dir = "/tmp/btk_probe_dir2"; await fs.rm(dir, {recursive:true, force:true});
await fs.mkdir(dir + "/ent", {recursive:true});
await fs.writeFile(dir + "/ent/.tmp-0123456789ab-x.json", "{\"half");
const old = new Date(Date.now() - 300000); await fs.utimes(dir + "/ent/.tmp-0123456789ab-x.json", old, old);
await fs.writeFile(dir + "/ent/empty.json", "");
await fs.writeFile(dir + "/ent/nul.json", "null");
await fs.mkdir(dir + "/ent/sub.json");
const p = new PersistBase("ent", dir);
const t = Date.now(); await p.waitForInit(true); console.log("init ms", Date.now()-t);
console.log(await fs.readdir(dir + "/ent"));
try { await p.writeValue("u", undefined); } catch (e) { console.log("undef:", e.message); }
await p.writeValue("../escape", {a:1}); console.log(await fs.readdir(dir));
// singleshot failure caching
const q = new PersistBase("ent2", "/proc/nonexistent");
try { await q.waitForInit(true); } catch (e) { console.log("init err1:", e.message); }
try { await q.waitForInit(true); } catch (e) { console.log("init err2:", e.message); }
