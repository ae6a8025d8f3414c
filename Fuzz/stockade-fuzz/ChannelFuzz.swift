// Fuzz targets for the channel: the record decoder (and the params and
// environment parsers) and the Noise handshake message parser.
import StockadeChannel

func fuzzChannelRecord(_ input: [UInt8]) { ChannelFuzzing.records(input) }

func fuzzChannelHandshake(_ input: [UInt8]) { ChannelFuzzing.handshake(input) }
