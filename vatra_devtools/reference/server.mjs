// The reference sync server that vatra_devtools.bench_reference measures Vatra against.
//
//     node server.mjs PORT DATA_DIR [--announce]
//
// A stock automerge-repo Repo, set up as automerge-repo's own sync server
// (automerge/automerge-repo-sync-server) sets it up: the WebSocket server adapter
// (NodeWSServerAdapter on a `ws` server) and the Node filesystem storage adapter
// (NodeFSStorageAdapter in DATA_DIR), no authentication, every document open to every
// peer: a peer that sends a `sync` for a document id the server does not have creates it.
// Like that sync server, it announces no document to a peer on its own (`announce`
// false, `access` true): each peer syncs the documents it asks for. With `--announce`
// it also offers every document it has loaded to every peer that connects (the
// generous policy of a browser tab, not of a server).
//
// Prints one line `listening <port>` once the socket is bound (PORT 0: any free port).
// SIGTERM or SIGINT: flushes the documents to DATA_DIR and exits 0.
//
// The packages are pinned in package.json / package-lock.json beside this file; the
// bench installs them with `npm ci` outside the repository and copies this file there.

import os from "node:os"
import process from "node:process"

import { Repo } from "@automerge/automerge-repo"
import { NodeWSServerAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"
import { WebSocketServer } from "ws"

const args = process.argv.slice(2)
const announce = args.includes("--announce")
const [portArg, dataDir] = args.filter(a => a !== "--announce")
const port = Number(portArg)
if (!dataDir || !Number.isInteger(port) || port < 0 || port > 65535) {
  console.error("usage: node server.mjs PORT DATA_DIR [--announce]")
  process.exit(2)
}

const wss = new WebSocketServer({ host: "127.0.0.1", port })
const repo = new Repo({
  network: [new NodeWSServerAdapter(wss)],
  storage: new NodeFSStorageAdapter(dataDir),
  peerId: `storage-server-${os.hostname()}`,
  shareConfig: {
    announce: async () => announce,
    access: async () => true,
  },
})

wss.on("listening", () => {
  console.log(`listening ${wss.address().port}`)
})
wss.on("error", err => {
  console.error(`reference server: ${err.message}`)
  process.exit(1)
})

let stopping = false
async function stop() {
  if (stopping) return
  stopping = true
  try {
    await repo.shutdown()  // disconnects every peer and flushes every document
  } finally {
    wss.close()
    process.exit(0)
  }
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
