// k6 cross-check of `surge load idle`: N connections at a paced rate, each
// subscribed to one of 100 topics, held HOLD seconds, answering pings.
import ws from 'k6/ws';
import { check } from 'k6';
import exec from 'k6/execution';

const URL = __ENV.URL || 'ws://127.0.0.1:18181/ws';
const CONNS = parseInt(__ENV.CONNS || '10000');
const RATE = parseInt(__ENV.RATE || '2000');
const HOLD = parseInt(__ENV.HOLD || '10');

export const options = {
  scenarios: {
    idle: {
      executor: 'constant-arrival-rate',
      rate: RATE, timeUnit: '1s',
      duration: `${Math.ceil(CONNS / RATE)}s`,
      preAllocatedVUs: CONNS, maxVUs: CONNS,
      gracefulStop: `${HOLD + 10}s`,
    },
  },
  summaryTrendStats: ['p(50)', 'p(90)', 'p(99)', 'p(99.9)', 'max', 'count'],
};

export default function () {
  const i = exec.scenario.iterationInTest;
  const res = ws.connect(`${URL}?topic=idle.${i % 100}`, {}, function (socket) {
    socket.setTimeout(() => socket.close(), HOLD * 1000);
  });
  check(res, { 'status 101': (r) => r && r.status === 101 });
}
