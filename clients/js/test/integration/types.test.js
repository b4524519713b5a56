// The TypeScript declarations: they compile in strict mode against a usage
// file (which also proves wrong field names are refused), and every frame
// type has exactly the fields, required and optional, that the server's
// OpenAPI document gives its schema.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import ts from 'typescript';

import { chatdBinary, getJson, startServer } from '../helpers/server.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const skip = chatdBinary() ? false : 'CHATD_BIN is not set to a chatd binary';

/** Declared interface -> the OpenAPI component describing the same frame. */
const FRAMES = {
  ClientMessageFrame: 'ClientMessageFrame',
  ClientJoinRoomFrame: 'ClientJoinRoomFrame',
  ClientLeaveRoomFrame: 'ClientLeaveRoomFrame',
  ClientTypingFrame: 'ClientTypingFrame',
  ClientHistoryFrame: 'ClientHistoryFrame',
  ClientPingFrame: 'ClientPingFrame',
  ClientRefreshFrame: 'ClientRefreshFrame',
  MessageFrame: 'ServerMessageFrame',
  AckFrame: 'ServerAckFrame',
  PresenceFrame: 'ServerPresenceFrame',
  RoomJoinedFrame: 'ServerRoomJoinedFrame',
  RoomLeftFrame: 'ServerRoomLeftFrame',
  TypingIndicatorFrame: 'ServerTypingIndicatorFrame',
  HistoryFrame: 'ServerHistoryFrame',
  PongFrame: 'ServerPongFrame',
  RefreshedFrame: 'ServerRefreshedFrame',
  MessageDeletedFrame: 'ServerMessageDeletedFrame',
  ErrorFrame: 'ServerErrorFrame',
  RoomPresence: 'RoomPresence',
};

test('the declarations compile in strict mode and refuse wrong frames', () => {
  const config = ts.getParsedCommandLineOfConfigFile(join(root, 'tsconfig.json'), {}, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (d) => assert.fail(ts.flattenDiagnosticMessageText(d.messageText, '\n')),
  });
  const program = ts.createProgram(config.fileNames, config.options);
  const diagnostics = ts.getPreEmitDiagnostics(program).map((d) => {
    const where = d.file ? `${d.file.fileName}:${d.file.getLineAndCharacterOfPosition(d.start).line + 1}` : '';
    return `${where} ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`;
  });
  assert.deepEqual(diagnostics, []);
  // The usage file really was compiled, with its three @ts-expect-error lines.
  const usage = program.getSourceFile(join(root, 'test/types/usage.ts'));
  assert.ok(usage, 'usage.ts is part of the program');
  assert.equal(usage.text.match(/@ts-expect-error/g).length, 3);
});

/** Fields of each interface of index.d.ts: name -> {required, optional}. */
function declaredFields() {
  const file = join(root, 'src/index.d.ts');
  const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
  const out = {};
  const unions = {};
  source.forEachChild((node) => {
    if (ts.isInterfaceDeclaration(node)) {
      const required = [];
      const optional = [];
      for (const member of node.members) {
        if (!ts.isPropertySignature(member)) continue;
        (member.questionToken ? optional : required).push(member.name.getText(source));
      }
      out[node.name.text] = { required: required.sort(), optional: optional.sort() };
    } else if (ts.isTypeAliasDeclaration(node) && ts.isUnionTypeNode(node.type)) {
      unions[node.name.text] = node.type.types
        .filter((t) => ts.isLiteralTypeNode(t) && ts.isStringLiteral(t.literal))
        .map((t) => t.literal.text)
        .sort();
    }
  });
  return { interfaces: out, unions };
}

/** Fields of an OpenAPI object schema, following `allOf` and `$ref`. */
function schemaFields(schemas, name) {
  const props = new Set();
  const required = new Set();
  const walk = (schema) => {
    if (schema.$ref) return walk(schemas[schema.$ref.split('/').pop()]);
    for (const part of schema.allOf ?? []) walk(part);
    for (const key of Object.keys(schema.properties ?? {})) props.add(key);
    for (const key of schema.required ?? []) required.add(key);
  };
  walk(schemas[name]);
  return {
    required: [...required].sort(),
    optional: [...props].filter((p) => !required.has(p)).sort(),
  };
}

let server;
before(async () => {
  if (!skip) server = await startServer();
});
after(async () => {
  await server?.kill();
});

test('every frame type matches the server OpenAPI schema field for field', { skip }, async () => {
  const { status, body: doc } = await getJson(server, '/api/chats/openapi.json');
  assert.equal(status, 200);
  const schemas = doc.components.schemas;
  const { interfaces, unions } = declaredFields();
  for (const [declared, component] of Object.entries(FRAMES)) {
    assert.ok(interfaces[declared], `index.d.ts declares ${declared}`);
    assert.ok(schemas[component], `the document has ${component}`);
    assert.deepEqual(interfaces[declared], schemaFields(schemas, component), `${declared} vs ${component}`);
  }
  // Every frame schema of the document is covered.
  const frameSchemas = Object.keys(schemas).filter((k) => /^(Client|Server)\w+Frame$/.test(k));
  assert.deepEqual(
    frameSchemas.sort(),
    Object.values(FRAMES).filter((c) => c.endsWith('Frame')).sort(),
  );
  assert.deepEqual(unions.ErrorCode, [...schemas.ErrorCode.enum].sort());
  assert.deepEqual(unions.PresenceStatus, [...schemas.PresenceStatus.enum].sort());
});
