import Testing
import StockadeCore

@Test func versionIsSet() { #expect(!Stockade.version.isEmpty) }
