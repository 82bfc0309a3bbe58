/**
 * A listener key written at the top level of the config (`maxMessageSize: 10MB` beside
 * `hostname`) is an unknown key, and its error says where the key belongs:
 * `listeners[].maxMessageSize`, set on each listener.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { cleanup, issuesOf } from './helpers.ts';

after(cleanup);

describe('unknown top-level keys that are listener keys', () => {
    it('point at listeners[] for maxMessageSize and maxClients', () => {
        const issues = issuesOf('hostname: mx.example.org\nmaxMessageSize: 10MB\nmaxClients: 100\n');
        assert.deepEqual(issues, [
            '2:1: unknown key "maxMessageSize" (did you mean "listeners[].maxMessageSize"? it is set on each entry of listeners)',
            '3:1: unknown key "maxClients" (did you mean "listeners[].maxClients"? it is set on each entry of listeners)',
        ]);
    });

    it('keeps the spelling suggestion for other unknown keys', () => {
        const issues = issuesOf('hostnme: mx.example.org\n');
        assert.deepEqual(issues, ['1:1: unknown key "hostnme" (did you mean "hostname"?)']);
    });
});
