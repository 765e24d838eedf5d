// End-to-end client for the agent's OTLP/HTTP receiver: sends traces and logs with the real
// OpenTelemetry JS SDK (BasicTracerProvider + LoggerProvider, no auto-instrumentation) to
// ${OTLP_ENDPOINT}/v1/traces and /v1/logs, then prints one JSON line with the ids it sent.
// Exits 0 only if every export succeeded (and exported every span and log record).
//
// Env: OTLP_ENDPOINT (base URL, e.g. http://127.0.0.1:4318), OTLP_PROTOCOL (json | protobuf),
//      SPANS (10), LOGS (10), SERVICE_NAME (js-e2e), TEST_RUN (""), OTLP_HEADERS (JSON object),
//      OTLP_COMPRESSION (none | gzip, default none), OTLP_TIMEOUT_MS (per-export timeout, 5000).
import { trace, ROOT_CONTEXT, SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { SeverityNumber } from '@opentelemetry/api-logs';
import { defaultResource, resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { LoggerProvider, BatchLogRecordProcessor } from '@opentelemetry/sdk-logs';
import { OTLPTraceExporter as TraceJson } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as TraceProto } from '@opentelemetry/exporter-trace-otlp-proto';
import { OTLPLogExporter as LogJson } from '@opentelemetry/exporter-logs-otlp-http';
import { OTLPLogExporter as LogProto } from '@opentelemetry/exporter-logs-otlp-proto';

const env = process.env;
const endpoint = (env.OTLP_ENDPOINT || 'http://127.0.0.1:4318').replace(/\/+$/, '');
const protocol = env.OTLP_PROTOCOL || 'json';
if (protocol !== 'json' && protocol !== 'protobuf') {
  console.error(`OTLP_PROTOCOL must be json or protobuf, not ${protocol}`);
  process.exit(2);
}
const SPANS = Number(env.SPANS ?? 10);
const LOGS = Number(env.LOGS ?? 10);
const exporterOptions = (signal) => ({
  url: `${endpoint}/v1/${signal}`,
  headers: env.OTLP_HEADERS ? JSON.parse(env.OTLP_HEADERS) : {},
  compression: env.OTLP_COMPRESSION || 'none',
  timeoutMillis: Number(env.OTLP_TIMEOUT_MS ?? 5000),
});

// Wrap exporter.export to observe every ExportResult (code 0 = SUCCESS, 1 = FAILED).
const failures = [];
const exported = { spans: 0, logs: 0 };
function watch(exporter, what) {
  const original = exporter.export.bind(exporter);
  exporter.export = (items, done) =>
    original(items, (result) => {
      if (result.code === 0) exported[what] += items.length;
      else failures.push(`${what} export of ${items.length} failed: ${result.error?.stack ?? result.error}`);
      done(result);
    });
  return exporter;
}

const json = protocol === 'json';
const spanExporter = watch(json ? new TraceJson(exporterOptions('traces')) : new TraceProto(exporterOptions('traces')), 'spans');
const logExporter = watch(json ? new LogJson(exporterOptions('logs')) : new LogProto(exporterOptions('logs')), 'logs');

const resource = defaultResource().merge(
  resourceFromAttributes({ 'service.name': env.SERVICE_NAME || 'js-e2e', 'test.run': env.TEST_RUN ?? '' }),
);
// Queues sized so that nothing is dropped before the final flush.
const tracerProvider = new BasicTracerProvider({
  resource,
  spanProcessors: [new BatchSpanProcessor(spanExporter, { maxQueueSize: Math.max(2048, SPANS) })],
});
const loggerProvider = new LoggerProvider({
  resource,
  processors: [new BatchLogRecordProcessor({ exporter: logExporter, maxQueueSize: Math.max(2048, LOGS) })],
});

const tracer = tracerProvider.getTracer('js-e2e-scope', '1.2.3');
const logger = loggerProvider.getLogger('js-e2e-logger', '4.5.6');

const spans = [];
let rootContext = ROOT_CONTEXT;
for (let i = 0; i < SPANS; i++) {
  const span = tracer.startSpan(`js-span-${i}`, {
    kind: i % 2 === 0 ? SpanKind.SERVER : SpanKind.CLIENT,
    attributes: { i, s: `v${i}`, f: i + 0.5, b: i % 2 === 0, arr: ['a', 'b'] },
  }, rootContext); // span 0 is a root, spans 1.. are its children
  span.addEvent('evt', { k: 'x' });
  if (i % 5 === 0) span.setStatus({ code: SpanStatusCode.ERROR, message: `bad ${i}` });
  if (i === 0) rootContext = trace.setSpan(ROOT_CONTEXT, span);
  else span.end();
  spans.push(span);
}

// Log records in span 0's context, so they carry its trace and span id. The context is passed
// explicitly: no global context manager is registered, so context.with() would not propagate it.
for (let i = 0; i < LOGS; i++) {
  logger.emit({
    body: `js-log-${i}`, severityNumber: SeverityNumber.WARN, severityText: 'WARN', attributes: { i },
    context: rootContext,
  });
}
spans[0]?.end();

// Flush and shut down each provider on its own, so a failing trace export still lets logs be tried.
for (const [name, provider] of [['tracer', tracerProvider], ['logger', loggerProvider]]) {
  for (const step of ['forceFlush', 'shutdown']) {
    try {
      await provider[step]();
    } catch (err) {
      failures.push(`${name} ${step}: ${err?.message ?? err}`);
    }
  }
}
if (exported.spans !== SPANS || exported.logs !== LOGS) {
  failures.push(`exported ${exported.spans}/${SPANS} spans and ${exported.logs}/${LOGS} logs`);
}

const ids = spans.map((s) => s.spanContext());
console.log(JSON.stringify({
  traceId: ids[0]?.traceId ?? null,
  spanIds: ids.map((c) => c.spanId),
  rootSpanId: ids[0]?.spanId ?? null,
  logs: LOGS,
  spans: SPANS,
}));
if (failures.length) {
  for (const f of failures) console.error(f);
  process.exit(1);
}
