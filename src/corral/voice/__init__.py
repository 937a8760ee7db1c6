"""Voice: offline speech in and out for the agent (pipecat pipeline, STT, TTS, Wyoming)."""
