// `$SRV.STATS` as @nats-io/services' client reads it: prints each endpoint's stats as JSON.
// Usage: node srv_stats.mjs nats://127.0.0.1:4222 inferbus-node
import { connect } from "@nats-io/transport-node";
import { Svcm } from "@nats-io/services";

const [server, name] = process.argv.slice(2);
const nc = await connect({ servers: server });
try {
  const client = new Svcm(nc).client({ maxWait: 2000 });
  const found = [];
  for await (const stats of await client.stats(name)) {
    for (const endpoint of stats.endpoints) {
      found.push({ name: endpoint.name, has_data: "data" in endpoint, data: endpoint.data });
    }
  }
  console.log(JSON.stringify(found));
} finally {
  await nc.close();
}
