"use strict";
// Minimal stand-in for the `di-singleton` package, written for persistkit's
// benchmark peer. `singleton(Ctor)` returns a constructor-like function that
// yields one shared instance per distinct (primitive) argument list.
function singleton(Ctor) {
  const instances = new Map();
  function Activator(...args) {
    const key = JSON.stringify(args);
    if (!instances.has(key)) {
      instances.set(key, new Ctor(...args));
    }
    return instances.get(key);
  }
  Activator.clear = (...args) => {
    if (args.length) {
      instances.delete(JSON.stringify(args));
    } else {
      instances.clear();
    }
  };
  return Activator;
}
module.exports = { singleton };
